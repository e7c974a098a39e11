"""Every collective and transfer between the ranks of an instance, in one place.

Tensor parallel: the stage's all-reduce (row-parallel layers, the vocab-parallel embedding) and
the LM head's all-gather, over the TP group of ``state``'s layout; no-ops on one rank. Control plane: the driver sends each step's inputs (plain host values, pickled) to every other
rank over a Gloo group, so it works the same whether the data plane is NCCL or Gloo. Data
plane (the world's backend: NCCL on GPUs, Gloo on CPU): a pipeline stage sends its hidden state
and residual to the next stage, and the last stage sends the sampled tokens to the driver.
Sends are asynchronous; their handles are kept until they complete, so a tensor is never freed
while it is on the wire.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from .state import tensor_parallel

Intermediate = tuple[torch.Tensor, torch.Tensor]  # hidden, residual


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the tensor-parallel group (in place)."""
    layout = tensor_parallel()
    if layout.size > 1:
        dist.all_reduce(tensor, group=layout.group)
    return tensor


def all_gather_last_dim(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's slice along the last dimension (the vocab-parallel logits)."""
    layout = tensor_parallel()
    if layout.size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(layout.size)]
    dist.all_gather(parts, tensor.contiguous(), group=layout.group)
    return torch.cat(parts, dim=-1)


def min_over(group: dist.ProcessGroup, value: int) -> int:
    """The smallest ``value`` any rank of ``group`` holds (on the host)."""
    tensor = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=group)
    return int(tensor.item())


class ControlPlane:
    """The driver's messages to the other ranks of its instance (a Gloo group of them all).

    The group's own timeout is long: a follower waits on it between steps for as long as the
    service stays idle. A send is bounded by ``send_timeout`` (a follower that stopped reading)."""

    def __init__(self, group: dist.ProcessGroup, driver: int, followers: list[int],
                 send_timeout: timedelta = timedelta(seconds=30)) -> None:
        self.group, self.driver, self.followers, self.send_timeout = group, driver, followers, send_timeout
        self._sends: list[dist.Work] = []

    def send(self, message: object) -> None:
        """To every follower, without waiting for them to take it."""
        self.wait_sent()
        payload = torch.frombuffer(bytearray(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.long)
        for rank in self.followers:
            self._sends.append(dist.isend(size, dst=rank, group=self.group))
            self._sends.append(dist.isend(payload, dst=rank, group=self.group))

    def wait_sent(self) -> None:
        for work in self._sends:
            work.wait(timeout=self.send_timeout)
        self._sends.clear()

    def receive(self) -> object:
        """The driver's next message (a follower waits here between steps)."""
        size = torch.empty(1, dtype=torch.long)
        dist.recv(size, src=self.driver, group=self.group)
        payload = torch.empty(int(size.item()), dtype=torch.uint8)
        dist.recv(payload, src=self.driver, group=self.group)
        return pickle.loads(payload.numpy().tobytes())


class PendingSends:
    """Asynchronous data-plane sends in flight, waited for before the next ones go out."""

    def __init__(self) -> None:
        self._works: list[dist.Work] = []

    def add(self, tensors: list[torch.Tensor], dst: int, group: dist.ProcessGroup | None = None) -> None:
        for tensor in tensors:
            self._works.append(dist.isend(tensor.contiguous(), dst=dst, group=group))

    def wait(self) -> None:
        for work in self._works:
            work.wait()
        self._works.clear()


def send_intermediate(sends: PendingSends, intermediate: Intermediate, dst: int) -> None:
    sends.wait()
    sends.add(list(intermediate), dst)


def receive_intermediate(num_tokens: int, hidden_size: int, dtype: torch.dtype, device: torch.device,
                         src: int) -> Intermediate:
    hidden = torch.empty((num_tokens, hidden_size), dtype=dtype, device=device)
    residual = torch.empty_like(hidden)
    dist.recv(hidden, src=src)
    dist.recv(residual, src=src)
    return hidden, residual


def token_group(driver: int, last_stage: int, timeout: timedelta | None = None) -> dist.ProcessGroup:
    """The pair that carries tokens back, as a group of its own (collective: every rank makes it).

    On the data plane's own pair of ranks, NCCL runs one pair's transfers in order on one stream:
    the driver's receive of batch k's tokens would hold up its send of batch k+1's hidden state
    to the next stage, and a two-stage pipeline would run one batch at a time."""
    return dist.new_group([driver, last_stage], timeout=timeout)


def send_tokens(sends: PendingSends, tensors: list[torch.Tensor | None], dst: int,
                group: dist.ProcessGroup | None) -> None:
    """The last stage's sampler output to the driver: the tokens, then logprobs when asked for (None: absent)."""
    sends.wait()
    sends.add([t for t in tensors if t is not None], dst, group)


def receive_tokens(num_rows: int, num_logprobs: int | None, device: torch.device, src: int,
                   group: dist.ProcessGroup | None) -> Callable[[], list[torch.Tensor | None]]:
    """Post the receives now; the returned call waits for them and gives, on the host, the tokens, their
    logprobs and the top logprobs and ids (None for those not asked for)."""
    token_ids = torch.empty(num_rows, dtype=torch.long, device=device)
    tensors = [token_ids]
    if num_logprobs is not None:
        tensors.append(torch.empty(num_rows, dtype=torch.float32, device=device))
        if num_logprobs > 0:
            tensors.append(torch.empty((num_rows, num_logprobs), dtype=torch.float32, device=device))
            tensors.append(torch.empty((num_rows, num_logprobs), dtype=torch.long, device=device))
    works = [dist.irecv(tensor, src=src, group=group) for tensor in tensors]

    def wait() -> list[torch.Tensor | None]:
        for work in works:
            work.wait()
        host: list[torch.Tensor | None] = [tensor.cpu() for tensor in tensors]
        return host + [None] * (4 - len(host))

    return wait
