"""Plain-PyTorch references of the SSD (Mamba-2) scan, written for clarity, in float32.

Shapes: B batch, T tokens, H heads, P head_dim, G groups (of B/C), N d_state, L chunk_size,
C chunks. Head h reads group h // (H // G) (consecutive heads share a group, as in mamba).

Given x [B, T, H, P], the positive step sizes dt [B, T, H], A [H] (negative), and
B_in, C_in [B, T, G, N], the selective SSM is, per head, with state h [P, N]:

    h_t = exp(dt_t * A) h_{t-1} + dt_t * x_t B_t^T,        y_t = h_t C_t

(the D skip and everything around the scan belong to the block, not here). `ssd_naive`
runs this recurrence step by step; `ssd_chunked` computes the same thing with the chunked
SSD algorithm of the Mamba-2 paper; `ssd_step` is one decode step. All three upcast their
inputs to float32 and return float32.

The chunked algorithm, per chunk of l <= L tokens (a_t = dt_t * A, s_i = a_1 + ... + a_i
within the chunk, v_t = dt_t * x_t), in the order the FLOP count of `blocks/ssm.py` follows:

1. intra-chunk: S = C B^T per group [l, l], masked by exp(s_i - s_j) for j <= i per head,
   then y_diag = S v;
2. chunk states: state_c = sum_j exp(s_l - s_j) v_j B_j^T per head [P, N];
3. state passing (sequential over chunks): h_c = exp(s_l) h_{c-1} + state_c;
4. state to output: y_off_i = exp(s_i) h_{c-1} C_i, and y = y_diag + y_off.

A last partial chunk is processed at its own length (no padding).
"""

from __future__ import annotations

import torch


def heads_from_groups(x_BTGN: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., G, N] -> [..., H, N], head h reading group h // (H // G)."""
    return x_BTGN.repeat_interleave(heads // x_BTGN.shape[-2], dim=-2)


def _f32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def _zero_state(x_BTHP: torch.Tensor, d_state: int) -> torch.Tensor:
    B, _, H, P = x_BTHP.shape
    return torch.zeros(B, H, P, d_state, device=x_BTHP.device, dtype=torch.float32)


def ssd_naive(
    x_BTHP: torch.Tensor,
    dt_BTH: torch.Tensor,
    A_H: torch.Tensor,
    B_BTGN: torch.Tensor,
    C_BTGN: torch.Tensor,
    initial_state_BHPN: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence one token at a time. Returns y [B, T, H, P] and the final state
    [B, H, P, N], both float32."""
    state = _zero_state(x_BTHP, B_BTGN.shape[-1]) if initial_state_BHPN is None else None
    state = initial_state_BHPN.float() if state is None else state
    ys = []
    for t in range(x_BTHP.shape[1]):
        y, state = ssd_step(x_BTHP[:, t], dt_BTH[:, t], A_H, B_BTGN[:, t], C_BTGN[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def ssd_step(
    x_BHP: torch.Tensor,
    dt_BH: torch.Tensor,
    A_H: torch.Tensor,
    B_BGN: torch.Tensor,
    C_BGN: torch.Tensor,
    state_BHPN: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: h = exp(dt A) h + dt x B^T, y = h C. Returns (y [B, H, P], new state
    [B, H, P, N]), float32; `state_BHPN` is not modified."""
    x, dt, A, Bm, Cm = _f32(x_BHP, dt_BH, A_H, B_BGN, C_BGN)
    H = x.shape[1]
    Bh, Ch = heads_from_groups(Bm, H), heads_from_groups(Cm, H)
    decay_BH = torch.exp(dt * A)
    state = decay_BH[..., None, None] * state_BHPN.float()
    state = state + (dt[..., None] * x)[..., :, None] * Bh[..., None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)
    return y, state


def segment_sums(a_BCHL: torch.Tensor) -> torch.Tensor:
    """[..., L] -> [..., L, L] with out[i, j] = a_{j+1} + ... + a_i for j <= i, -inf above
    the diagonal. Summed directly (not as a difference of cumsums) for accuracy."""
    L = a_BCHL.shape[-1]
    ones = torch.ones(L, L, dtype=torch.bool, device=a_BCHL.device)
    below, on_or_below = ones.tril(-1), ones.tril(0)
    terms = a_BCHL[..., :, None].expand(*a_BCHL.shape, L).masked_fill(~below, 0.0)
    return terms.cumsum(dim=-2).masked_fill(~on_or_below, float("-inf"))


def _equal_chunks(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    chunk: int,
    state_BHPN: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked algorithm over a span whose length is a multiple of `chunk`."""
    Bsz, T, H, P = x.shape
    G, N, n_chunks = Bm.shape[2], Bm.shape[3], T // chunk
    x_BCLHP = x.view(Bsz, n_chunks, chunk, H, P)
    v_BCLHP = x_BCLHP * dt.view(Bsz, n_chunks, chunk, H, 1)
    B_BCLGN = Bm.view(Bsz, n_chunks, chunk, G, N)
    C_BCLGN = Cm.view(Bsz, n_chunks, chunk, G, N)
    a_BCHL = (dt * A).view(Bsz, n_chunks, chunk, H).permute(0, 1, 3, 2)
    acum_BCHL = a_BCHL.cumsum(dim=-1)

    # 1. intra-chunk: C B^T per group, decay mask per head, times v
    CB_BCGLS = torch.einsum("bclgn,bcsgn->bcgls", C_BCLGN, B_BCLGN)
    mask_BCHLS = torch.exp(segment_sums(a_BCHL))
    scores_BCHLS = (
        CB_BCGLS[:, :, :, None] * mask_BCHLS.reshape(Bsz, n_chunks, G, H // G, chunk, chunk)
    ).reshape(Bsz, n_chunks, H, chunk, chunk)  # reshape: the mask may not be contiguous
    y_diag = torch.einsum("bchls,bcshp->bclhp", scores_BCHLS, v_BCLHP)

    # 2. chunk states: each token's contribution decayed to the chunk end
    to_end_BCLH = torch.exp(acum_BCHL[..., -1:] - acum_BCHL).permute(0, 1, 3, 2)
    Bh_BCLHN = heads_from_groups(B_BCLGN, H)
    states_BCHPN = torch.einsum("bclhn,bclhp->bchpn", Bh_BCLHN, v_BCLHP * to_end_BCLH[..., None])

    # 3. state passing: the state entering every chunk
    chunk_decay_BCH = torch.exp(acum_BCHL[..., -1])
    entering = []
    for c in range(n_chunks):
        entering.append(state_BHPN)
        state_BHPN = chunk_decay_BCH[:, c, :, None, None] * state_BHPN + states_BCHPN[:, c]
    entering_BCHPN = torch.stack(entering, dim=1)

    # 4. the entering state read out by C, decayed to each position
    from_start_BCLH = torch.exp(acum_BCHL).permute(0, 1, 3, 2)
    Ch_BCLHN = heads_from_groups(C_BCLGN, H) * from_start_BCLH[..., None]
    y_off = torch.einsum("bclhn,bchpn->bclhp", Ch_BCLHN, entering_BCHPN)
    return (y_diag + y_off).reshape(Bsz, T, H, P), state_BHPN


def ssd_chunked(
    x_BTHP: torch.Tensor,
    dt_BTH: torch.Tensor,
    A_H: torch.Tensor,
    B_BTGN: torch.Tensor,
    C_BTGN: torch.Tensor,
    chunk_size: int,
    initial_state_BHPN: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked SSD algorithm (module docstring). Returns y [B, T, H, P] and the final
    state [B, H, P, N], both float32. Any T >= 1 and chunk_size >= 1 (a chunk longer than
    T is one chunk of length T)."""
    x, dt, A, Bm, Cm = _f32(x_BTHP, dt_BTH, A_H, B_BTGN, C_BTGN)
    state = _zero_state(x, Bm.shape[-1]) if initial_state_BHPN is None else None
    state = initial_state_BHPN.float() if state is None else state
    T = x.shape[1]
    full = (T // chunk_size) * chunk_size
    spans = [(0, full, chunk_size)] if full else []
    if full < T:
        spans.append((full, T, T - full))
    ys = []
    for start, end, chunk in spans:
        y, state = _equal_chunks(
            x[:, start:end], dt[:, start:end], A, Bm[:, start:end], Cm[:, start:end], chunk, state
        )
        ys.append(y)
    return torch.cat(ys, dim=1), state
