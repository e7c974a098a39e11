"""Tests for edge_runtime.config: wrangler config lookup, environments, secrets, validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from config_projects import BASE_TOML, load_error, make_project, toml_project
from edge_runtime.catalog import DEFAULT_POPS
from edge_runtime.config import (
    CONFIG_FILENAMES,
    ConfigError,
    EdgewiseConfig,
    LatencyConfig,
    LimitsConfig,
    PopSpec,
    WorkerConfig,
    find_config,
    load_config,
)

# ---- finding the file -------------------------------------------------------------------


def test_lookup_order_is_json_then_jsonc_then_toml(tmp_path: Path) -> None:
    files = {
        "wrangler.json": '{"name": "from-json", "main": "src/entry.py", "compatibility_date": "2025-11-02"}',
        "wrangler.jsonc": '{"name": "from-jsonc", "main": "src/entry.py", "compatibility_date": "2025-11-02"}',
        "wrangler.toml": BASE_TOML.replace("hello", "from-toml"),
    }
    make_project(tmp_path, files)
    assert CONFIG_FILENAMES == ("wrangler.json", "wrangler.jsonc", "wrangler.toml")
    for expected in ("json", "jsonc", "toml"):
        assert find_config(tmp_path) == (tmp_path / f"wrangler.{expected}").resolve()
        assert load_config(tmp_path).name == f"from-{expected}"
        (tmp_path / f"wrangler.{expected}").unlink()


def test_find_config_error_names_dir_and_all_filenames(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        find_config(tmp_path)
    message = str(caught.value)
    assert str(tmp_path.resolve()) in message
    assert all(name in message for name in CONFIG_FILENAMES)


def test_config_path_overrides_search_and_main_is_relative_to_it(tmp_path: Path) -> None:
    make_project(tmp_path, {"wrangler.toml": BASE_TOML})
    prod_toml = BASE_TOML.replace("hello", "prod").replace("src/entry.py", "app/main.py")
    other = make_project(tmp_path / "deploy", {"prod.toml": prod_toml}, entry="app/main.py")

    config = load_config(tmp_path, config_path=other / "prod.toml")

    assert config.name == "prod"
    assert config.file == (other / "prod.toml").resolve()
    assert config.root == other.resolve()
    assert config.main == (other / "app/main.py").resolve()


def test_relative_config_path_falls_back_to_project_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project(tmp_path / "proj", {"alt.toml": BASE_TOML.replace("hello", "alt")})
    monkeypatch.chdir(tmp_path)
    assert load_config(tmp_path / "proj", config_path=Path("proj/alt.toml")).name == "alt"
    assert load_config(tmp_path / "proj", config_path=Path("alt.toml")).name == "alt"


# ---- formats ----------------------------------------------------------------------------


def test_jsonc_allows_comments_and_trailing_commas(tmp_path: Path) -> None:
    jsonc = """\
        // the C3 Python template, plus edgewise settings
        {
          "name": "hello",
          "main": "src/entry.py", /* block comment */
          "compatibility_date": "2025-11-02",
          "compatibility_flags": ["python_workers",],
          "observability": {"enabled": true},
          "vars": {"GREETING": "hi", "LIMITS": {"n": 3, "tags": ["a", "b"]}},
          "edgewise": {"pops": ["LHR", "FRA",], "latency": false},
        }
    """
    config = load_config(make_project(tmp_path, {"wrangler.jsonc": jsonc}))

    assert config.compatibility_flags == ("python_workers",)
    assert dict(config.vars) == {"GREETING": "hi", "LIMITS": {"n": 3, "tags": ["a", "b"]}}
    assert config.edgewise.pop_colos == ("LHR", "FRA")
    assert config.edgewise.latency == LatencyConfig(enabled=False)
    assert config.warnings == ()


def test_toml_reads_every_used_key(tmp_path: Path) -> None:
    extra = """\
        routes = [{ pattern = "example.com/*", zone_name = "example.com" }]
        kv_namespaces = [{ binding = "KV", id = "abc" }]

        [vars]
        API_HOST = "example.com"
        RETRIES = 3
        DEBUG = true

        [ai]
        binding = "AI"
        remote = true

        [triggers]
        crons = ["*/5 * * * *", "0 17 * * sun", "59 23 LW * *", "0 9 * * MON#2", "0 0 1 JAN-MAR *"]

        [dev]
        ip = "127.0.0.1"
        port = 9999
        local_protocol = "http"
    """
    config = load_config(toml_project(tmp_path, extra))

    assert config.name == "hello"
    assert config.main == (tmp_path / "src/entry.py").resolve()
    assert config.compatibility_date == "2025-11-02"
    assert dict(config.vars) == {"API_HOST": "example.com", "RETRIES": 3, "DEBUG": True}
    assert config.ai_binding == "AI"
    assert config.crons[0] == "*/5 * * * *" and len(config.crons) == 5
    assert (config.dev.ip, config.dev.port) == ("127.0.0.1", 9999)
    assert config.env_name is None
    assert config.warnings == ()  # routes/kv_namespaces are known Cloudflare keys


def test_unquoted_toml_date_is_accepted(tmp_path: Path) -> None:
    config = load_config(toml_project(tmp_path, base=BASE_TOML.replace('"2025-11-02"', "2025-11-02")))
    assert config.compatibility_date == "2025-11-02"


def test_unknown_top_level_key_is_a_warning_not_an_error(tmp_path: Path) -> None:
    config = load_config(toml_project(tmp_path, 'mian = "oops"\n'))
    assert config.warnings == ('Unexpected fields found in top-level field: "mian"',)


def test_missing_python_workers_flag_is_a_warning(tmp_path: Path) -> None:
    base = BASE_TOML.replace('["python_workers"]', "[]")
    config = load_config(toml_project(tmp_path, base=base))
    assert len(config.warnings) == 1 and "python_workers" in config.warnings[0]


# ---- environments and vars --------------------------------------------------------------

ENV_TOML = """\
[vars]
TOP = "top"

[ai]
binding = "AI"

[edgewise]
pops = ["LHR", "FRA"]
client_location = "GB"

[env.staging]
main = "src/staging.py"
compatibility_flags = ["python_workers", "disable_python_no_global_handlers"]

[env.staging.vars]
STAGE = "staging"

[env.staging.edgewise]
client_location = "35.68,139.76"

[env.bare]
"""


def test_env_overrides_keys_and_does_not_inherit_vars_or_ai(tmp_path: Path) -> None:
    toml_project(tmp_path, ENV_TOML)
    (tmp_path / "src/staging.py").write_text("")

    top = load_config(tmp_path)
    staging = load_config(tmp_path, env_name="staging")
    bare = load_config(tmp_path, env_name="bare")

    assert (top.name, dict(top.vars), top.ai_binding) == ("hello", {"TOP": "top"}, "AI")
    assert staging.env_name == "staging"
    assert staging.name == "hello-staging"  # wrangler's legacy_env naming
    assert staging.main == (tmp_path / "src/staging.py").resolve()
    assert staging.uses_global_handlers and not top.uses_global_handlers
    assert dict(staging.vars) == {"STAGE": "staging"}
    assert staging.ai_binding is None
    assert (dict(bare.vars), bare.ai_binding) == ({}, None)
    assert any('"vars" exists at the top level' in w for w in bare.warnings)


def test_env_inherits_edgewise_and_may_override_its_keys(tmp_path: Path) -> None:
    toml_project(tmp_path, ENV_TOML)
    (tmp_path / "src/staging.py").write_text("")

    staging = load_config(tmp_path, env_name="staging")
    bare = load_config(tmp_path, env_name="bare")

    assert staging.edgewise.pop_colos == bare.edgewise.pop_colos == ("LHR", "FRA")
    assert staging.edgewise.client_location == "35.68,139.76"
    assert bare.edgewise.client_location == "GB"


def test_var_overrides_replace_and_add_string_vars(tmp_path: Path) -> None:
    toml_project(tmp_path, '[vars]\nA = "config"\nN = 1\n')
    config = load_config(tmp_path, var_overrides={"A": "cli", "B": "x:y"})
    assert dict(config.vars) == {"A": "cli", "N": 1, "B": "x:y"}


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(toml_project(tmp_path, '[vars]\nA = "a"\n[edgewise.cf]\nasn = 1\n'))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.vars["A"] = "b"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.edgewise.cf["asn"] = 2  # type: ignore[index]


# ---- secrets ----------------------------------------------------------------------------

DEV_VARS = """\
# local secrets
API_KEY=plain
export EXPORTED=yes
QUOTED="quoted value"
SINGLE='single $NOT_EXPANDED'

EMPTY=
"""


def test_dev_vars_dotenv_syntax(tmp_path: Path) -> None:
    make_project(tmp_path, {"wrangler.toml": BASE_TOML, ".dev.vars": DEV_VARS, ".env": "FROM_ENV=1\n"})
    secrets = dict(load_config(tmp_path).secrets)
    assert secrets == {
        "API_KEY": "plain",
        "EXPORTED": "yes",
        "QUOTED": "quoted value",
        "SINGLE": "single $NOT_EXPANDED",
        "EMPTY": "",
    }  # .env is not read when .dev.vars exists


def test_dev_vars_for_env_wins_over_dev_vars(tmp_path: Path) -> None:
    files = {
        "wrangler.toml": BASE_TOML + "[env.staging]\n",
        ".dev.vars": "WHICH=default\n",
        ".dev.vars.staging": "WHICH=staging\n",
    }
    make_project(tmp_path, files)
    assert dict(load_config(tmp_path, env_name="staging").secrets) == {"WHICH": "staging"}
    assert dict(load_config(tmp_path).secrets) == {"WHICH": "default"}


def test_dot_env_is_the_fallback_unless_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_project(tmp_path, {"wrangler.toml": BASE_TOML, ".env": "TOKEN=from-dot-env\n"})
    monkeypatch.delenv("CLOUDFLARE_LOAD_DEV_VARS_FROM_DOT_ENV", raising=False)
    assert dict(load_config(tmp_path).secrets) == {"TOKEN": "from-dot-env"}
    monkeypatch.setenv("CLOUDFLARE_LOAD_DEV_VARS_FROM_DOT_ENV", "false")
    assert dict(load_config(tmp_path).secrets) == {}


# ---- compatibility rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("date", "flags", "expected"),
    [
        ("2025-08-13", [], True),
        ("2025-08-14", [], False),
        ("2025-11-02", [], False),
        ("2025-11-02", ["disable_python_no_global_handlers"], True),
        ("2024-01-01", ["python_no_global_handlers"], False),
    ],
)
def test_uses_global_handlers(tmp_path: Path, date: str, flags: list[str], expected: bool) -> None:
    config = {"name": "w", "main": "src/entry.py", "compatibility_date": date,
              "compatibility_flags": ["python_workers", *flags]}  # fmt: skip
    make_project(tmp_path, {"wrangler.json": json.dumps(config)})
    assert load_config(tmp_path).uses_global_handlers is expected


# ---- [edgewise] -------------------------------------------------------------------------


def test_edgewise_defaults(tmp_path: Path) -> None:
    edgewise = load_config(toml_project(tmp_path)).edgewise
    assert edgewise == EdgewiseConfig()
    assert edgewise.pop_colos == DEFAULT_POPS
    assert all(pop.port is None and pop.healthy for pop in edgewise.pops)
    assert edgewise.latency == LatencyConfig(enabled=True, base_ms=2.0, ms_per_1000km=10.0)
    assert edgewise.limits == LimitsConfig()
    assert edgewise.limits.max_request_body_bytes == 100 * 1024 * 1024
    assert (edgewise.client_location, edgewise.ip_locations, dict(edgewise.cf), edgewise.backends) == (
        None, (), {}, (),
    )  # fmt: skip


def test_edgewise_pops_as_strings_and_tables(tmp_path: Path) -> None:
    extra = """\
        [edgewise]
        pops = ["lhr", { colo = "FRA", port = 9001 }, { colo = "SIN", healthy = false }]
        latency = { base_ms = 1, ms_per_1000km = 8.5 }
        limits = { max_subrequests = 1000, wall_time_s = 5 }
        ip_locations = { "203.0.113.7/24" = "lhr", "2001:db8::/32" = "48.85,2.35" }
        cf = { asn = 13335, botManagement = { score = 99 } }
        backends = [{ url = "http://127.0.0.1:8000", location = "fra", token = "t" }]
    """
    edgewise = load_config(toml_project(tmp_path, extra)).edgewise

    assert edgewise.pops == (PopSpec("LHR"), PopSpec("FRA", port=9001), PopSpec("SIN", healthy=False))
    assert edgewise.latency == LatencyConfig(base_ms=1.0, ms_per_1000km=8.5)
    assert (edgewise.limits.max_subrequests, edgewise.limits.wall_time_s) == (1000, 5.0)
    assert edgewise.ip_locations == (("203.0.113.0/24", "LHR"), ("2001:db8::/32", "48.85,2.35"))
    assert dict(edgewise.cf) == {"asn": 13335, "botManagement": {"score": 99}}
    assert edgewise.backends[0].location == "FRA" and edgewise.backends[0].token == "t"


@pytest.mark.parametrize("value", ["false", '"off"', "{ enabled = false }"])
def test_latency_can_be_switched_off(tmp_path: Path, value: str) -> None:
    config = load_config(toml_project(tmp_path, f"[edgewise]\nlatency = {value}\n"))
    assert config.edgewise.latency.enabled is False


# ---- errors: each names the file and the dotted key ---------------------------------------

ERROR_CASES = [
    # (id, base config, extra TOML, expected key, fragment of the message)
    ("missing main", BASE_TOML.replace('main = "src/entry.py"\n', ""), "", "main", "is required"),
    ("main not .py", BASE_TOML.replace("src/entry.py", "src/index.js"), "", "main", '".py"'),
    ("main missing", BASE_TOML.replace("src/entry.py", "src/nope.py"), "", "main", "does not exist"),
    ("missing name", BASE_TOML.replace('name = "hello"\n', ""), "", "name", "is required"),
    ("name wrong type", BASE_TOML.replace('"hello"', "5"), "", "name", "must be a non-empty string, got 5"),
    ("impossible date", BASE_TOML.replace("2025-11-02", "2025-02-30"), "", "compatibility_date", "calendar"),
    ("flags not list", BASE_TOML.replace('["python_workers"]', '"python_workers"'), "",
     "compatibility_flags", "must be an array"),
    ("bad cron", BASE_TOML, '[triggers]\ncrons = ["* * * * *", "61 * * * *"]\n',
     "triggers.crons[1]", "minute"),
    ("cron field count", BASE_TOML, '[triggers]\ncrons = ["* * *"]\n', "triggers.crons[0]", "5-field"),
    ("ai without binding", BASE_TOML, "[ai]\nremote = true\n", "ai.binding", "is required"),
    ("unknown colo", BASE_TOML, '[edgewise]\npops = ["LHR", "FRA", "XYZ"]\n', "edgewise.pops[2]", "DFW"),
    ("unknown colo in table", BASE_TOML, '[edgewise]\npops = [{ colo = "QQQ" }]\n',
     "edgewise.pops[0].colo", "PoP code"),
    ("duplicate pop", BASE_TOML, '[edgewise]\npops = ["LHR", "lhr"]\n', "edgewise.pops[1]", "once"),
    ("bad port", BASE_TOML, '[edgewise]\npops = [{ colo = "LHR", port = 70000 }]\n',
     "edgewise.pops[0].port", "0 to 65535"),
    ("no pops", BASE_TOML, "[edgewise]\npops = []\n", "edgewise.pops", "at least one"),
    ("negative limit", BASE_TOML, "[edgewise.limits]\nmax_subrequests = -1\n",
     "edgewise.limits.max_subrequests", ">= 0"),
    ("unknown edgewise key", BASE_TOML, '[edgewise]\npopz = ["LHR"]\n', "edgewise.popz", "did you mean 'pops'"),
    ("unknown latency key", BASE_TOML, "[edgewise.latency]\nbase = 1\n", "edgewise.latency.base", "base_ms"),
    ("bad cidr", BASE_TOML, '[edgewise.ip_locations]\n"300.1.2.0/24" = "LHR"\n',
     'edgewise.ip_locations."300.1.2.0/24"', "IP network"),
    ("bad client location", BASE_TOML, '[edgewise]\nclient_location = "91,0"\n',
     "edgewise.client_location", "latitude"),
    ("bad backend url", BASE_TOML, '[[edgewise.backends]]\nurl = "localhost:8000"\n',
     "edgewise.backends[0].url", "http(s) URL"),
    ("bad dev port", BASE_TOML, '[dev]\nport = "8787"\n', "dev.port", "port number"),
    ("bad backend location", BASE_TOML, '[[edgewise.backends]]\nurl = "http://h:1"\nlocation = "Mars"\n',
     "edgewise.backends[0].location", "LAT,LON"),
    ("unknown model builtin", BASE_TOML, '[edgewise.models]\n"@cf/a/b" = "@cf/edgewise/tiny-shakspeare"\n',
     'edgewise.models."@cf/a/b"', "did you mean '@cf/edgewise/tiny-shakespeare'"),
    ("model not a table", BASE_TOML, '[edgewise]\nmodels = ["./m"]\n', "edgewise.models", "a table"),
    ("model not a string", BASE_TOML, '[edgewise.models]\n"@cf/a/b" = 3\n', 'edgewise.models."@cf/a/b"',
     "non-empty string"),
    ("model name with spaces", BASE_TOML, '[edgewise.models]\n"my model" = "@cf/edgewise/tiny-shakespeare"\n',
     'edgewise.models."my model"', "model names must look like"),
    ("unknown backend key", BASE_TOML, '[edgewise.backend]\ndevise = "cpu"\n', "edgewise.backend.devise",
     "did you mean 'device'"),
    ("bad backend device", BASE_TOML, '[edgewise.backend]\ndevice = "tpu"\n', "edgewise.backend.device",
     '"auto", "cpu" or "cuda"'),
    ("bad backend dtype", BASE_TOML, '[edgewise.backend]\ndtype = "fp16"\n', "edgewise.backend.dtype", "float16"),
    ("bad backend port", BASE_TOML, "[edgewise.backend]\nport = -1\n", "edgewise.backend.port", "port number"),
    ("bad backend location spec", BASE_TOML, '[edgewise.backend]\nlocation = "XQZ"\n',
     "edgewise.backend.location", "PoP code"),
    ("negative max_queue", BASE_TOML, "[edgewise.backend]\nmax_queue = -1\n", "edgewise.backend.max_queue",
     ">= 0"),
    ("zero ai timeout", BASE_TOML, "[edgewise.limits]\nai_read_timeout_s = 0\n",
     "edgewise.limits.ai_read_timeout_s", ">= 0.001"),
]


@pytest.mark.parametrize(("base", "extra", "key", "fragment"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])  # fmt: skip
def test_error_names_file_and_key(tmp_path: Path, base: str, extra: str, key: str, fragment: str) -> None:
    error = load_error(toml_project(tmp_path, extra, base=base))
    assert error.file == (tmp_path / "wrangler.toml").resolve()
    assert error.key == key
    assert str(error).startswith(f"{error.file}: '{key}' ")
    assert fragment in str(error)


def test_error_message_format(tmp_path: Path) -> None:
    error = load_error(toml_project(tmp_path, base=BASE_TOML.replace('"2025-11-02"', "12")))
    expected = "'compatibility_date' must be a date like \"2025-11-02\", got 12"
    assert str(error) == f"{tmp_path.resolve() / 'wrangler.toml'}: {expected}"


def test_error_in_env_names_the_env_key(tmp_path: Path) -> None:
    extra = '[env.staging]\nmain = "src/entry.txt"\n[env.prod.edgewise]\npops = ["NOPE"]\n'
    toml_project(tmp_path, extra)
    assert load_error(tmp_path, env_name="staging").key == "env.staging.main"
    assert load_error(tmp_path, env_name="prod").key == "env.prod.edgewise.pops[0]"


def test_unknown_env_lists_defined_envs(tmp_path: Path) -> None:
    error = load_error(toml_project(tmp_path, "[env.staging]\n[env.prod]\n"), env_name="qa")
    assert error.key == "env"
    assert "wrangler.toml" in str(error) and "'qa'" in str(error) and "prod, staging" in str(error)


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    error = load_error(toml_project(tmp_path, "[vars\nA = 1\n"))
    assert error.file == (tmp_path / "wrangler.toml").resolve()
    assert "wrangler.toml" in str(error) and "line 5" in str(error)


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    make_project(tmp_path, {"wrangler.jsonc": '{\n  "name": "x",\n  "main": ]\n}\n'})
    error = load_error(tmp_path)
    assert error.file == (tmp_path / "wrangler.jsonc").resolve()
    assert "wrangler.jsonc" in str(error) and "line 3" in str(error)


def test_worker_config_validates_at_construction(tmp_path: Path) -> None:
    make_project(tmp_path, {})
    kwargs = dict(file=tmp_path / "wrangler.toml", root=tmp_path, name="w", main=tmp_path / "src/entry.py",
                  compatibility_date="2025-11-02", compatibility_flags=(), vars={}, secrets={}, crons=(),
                  ai_binding=None)  # fmt: skip
    assert WorkerConfig(**kwargs).dev.port == 8787  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="compatibility_date"):
        WorkerConfig(**{**kwargs, "compatibility_date": "02/11/2025"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pops"):
        EdgewiseConfig(pops=(PopSpec("LHR"), PopSpec("LHR")))
