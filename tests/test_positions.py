"""Rules for ops that move or pick positions — slices, pad, roll, flip, gathers — and for
grouped ConvTranspose, GLU / chunked gates, interpolate by a scale factor and einsum.
Each keeps the contract through fx and export, and slims where its math allows."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_contract, kept_reasons, n_params, random_filter_masks, removed_idx
from helpers import mask_rows

FRONT_ENDS = ["fx", "export"]


class Block(nn.Module):
    """conv a (8 channels) → op → conv b; ``cin_b`` is what the op leaves."""

    def __init__(self, op, cin_b=8, extra=None):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(cin_b, 4, 1)
        if extra is not None:
            self.extra = extra
        self.op = op

    def forward(self, x):
        return self.b(self.op(self, F.relu(self.a(x))))


def _check(op, masks_rows=(1, 4, 6), front_end="fx", smaller=True, **kw):
    torch.manual_seed(0)
    m = Block(op, extra=nn.Upsample(scale_factor=2) if op is CHANNEL_WISE.get("upsample_module") else
              nn.GLU(1) if kw.pop("glu", False) else None, **kw).eval()
    res = assert_contract(m, {"a.weight": mask_rows(m, "a.weight", masks_rows)}, torch.randn(2, 3, 6, 6),
                          front_end=front_end)
    if smaller:
        assert n_params(res.module) < n_params(m), kept_reasons(res)
    return m, res


CHANNEL_WISE = {
    "pad_spatial_zeros": lambda m, y: F.pad(y, (1, 1, 2, 0)),
    "pad_spatial_reflect": lambda m, y: F.pad(y, (1, 1, 1, 1), mode="reflect"),
    "pad_spatial_replicate": lambda m, y: F.pad(y, (1, 2, 0, 1), mode="replicate"),
    "roll_spatial": lambda m, y: torch.roll(y, shifts=(1, 2), dims=(2, 3)),
    "flip_channels": lambda m, y: torch.flip(y, (1,)),
    "flip_width": lambda m, y: y.flip(3),
    "interpolate_scale_bilinear": lambda m, y: F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False),
    "interpolate_scale_nearest": lambda m, y: F.interpolate(y, scale_factor=1.5, mode="nearest"),
    "upsample_module": lambda m, y: m.extra(y),
    "normalize_channels": lambda m, y: F.normalize(y, dim=1),  # removed channels are zero: no share of the norm
    "norm_over_space": lambda m, y: y * y.norm(p=2, dim=(2, 3), keepdim=True),
}


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("name", sorted(CHANNEL_WISE))
def test_channels_pass_ops_that_move_positions(name, front_end):
    m, res = _check(CHANNEL_WISE[name], front_end=front_end)
    assert removed_idx(res, m, "a.weight") == {1, 4, 6}


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_zero_padded_channels_still_prune(front_end):
    """CIFAR ResNet "option A": the shortcut pads the channel dim with zeros."""
    m, res = _check(lambda m, y: F.pad(y[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2)), front_end=front_end, cin_b=12)
    assert removed_idx(res, m, "a.weight") == {1, 4, 6}
    assert res.module.get_parameter("b.weight").shape[1] == 9


@pytest.mark.parametrize("kind", ["roll", "reflect"])
def test_rolled_or_reflect_padded_channels_are_fixed(kind):
    def op(m, y):
        if kind == "roll":
            return torch.roll(y, 1, 1)
        return F.pad(y.transpose(1, 3), (1, 1, 0, 0), mode="reflect").transpose(1, 3)

    m, res = _check(op, smaller=False, cin_b=8 if kind == "roll" else 10)
    assert removed_idx(res, m, "a.weight") == set(), kept_reasons(res)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_slices_are_offsets(front_end):
    """GhostNet / DPN / ReXNet: x[:, a:b], narrow, a slice of a slice; bounds patched."""
    def op(m, y):
        left, right = y[:, :5], y.narrow(1, 3, 5)
        return torch.cat([left[:, 1:4] + right[:, 0:3], right[:, 3:]], 1)

    m, res = _check(op, front_end=front_end, cin_b=5)
    # pairs (1, 3), (2, 4), (3, 5) are added: 1 and 4 are held by 3 and 2; 0 is read by nothing
    assert removed_idx(res, m, "a.weight") == {0, 6}
    assert res.module.get_parameter("b.weight").shape[1] == 4


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_gather_by_a_tensor_index_keeps_other_dims(front_end):
    """LeViT: attention_biases[:, attention_bias_idxs] — the heads dim stays prunable."""

    class Bias(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 8)
            self.biases = nn.Parameter(torch.randn(8, 5))
            self.register_buffer("idxs", torch.randint(0, 5, (3, 3)))
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            ab = self.biases[:, self.idxs]
            return self.out(torch.einsum("bnc,cnm->bmc", self.fc(x), ab))

    torch.manual_seed(0)
    m = Bias().eval()
    res = assert_contract(m, {"fc.weight": mask_rows(m, "fc.weight", [1, 5])}, torch.randn(2, 3, 4),
                          front_end=front_end)
    assert removed_idx(res, m, "biases") == {1, 5}


class GroupedT(nn.Module):
    def __init__(self, groups, cout):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.t = nn.ConvTranspose2d(8, cout, 2, stride=2, groups=groups)
        self.b = nn.Conv2d(cout, 4, 1)

    def forward(self, x):
        return self.b(self.t(F.relu(self.a(x))))


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("groups,cout,rows,gone", [(4, 12, [0, 2, 4, 6], {0, 2, 4, 6}), (8, 16, [1, 5], {1, 5}),
                                                    (2, 6, [1, 2], set())])
def test_grouped_conv_transpose(groups, cout, rows, gone, front_end):
    """Grouped: the same in-group positions go in every group; depthwise (groups = in):
    an input channel goes with its outputs."""
    torch.manual_seed(0)
    m = GroupedT(groups, cout).eval()
    res = assert_contract(m, {"a.weight": mask_rows(m, "a.weight", rows)}, torch.randn(2, 3, 4, 4),
                          front_end=front_end)
    assert removed_idx(res, m, "a.weight") == gone, kept_reasons(res)
    if gone and front_end == "fx":
        t = res.module.t
        assert t.in_channels == 8 - len(gone) and t.weight.shape[0] == t.in_channels


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("kind", ["glu", "glu_module", "chunk_sigmoid", "split_swiglu"])
def test_gates_split_along_channels(kind, front_end):
    """GLU, x.chunk(2) → a * sigmoid(b): channel c goes with channel c + n/2."""
    def op(m, y):
        if kind == "glu":
            return F.glu(y, dim=1)
        if kind == "glu_module":
            return m.extra(y)
        a, g = y.chunk(2, dim=1) if kind == "chunk_sigmoid" else torch.split(y, 4, 1)
        return a * torch.sigmoid(g) if kind == "chunk_sigmoid" else F.silu(g) * a

    m, res = _check(op, masks_rows=(1, 2, 5), front_end=front_end, cin_b=4, glu=kind == "glu_module")
    assert removed_idx(res, m, "a.weight") == {1, 2, 5, 6}  # 2 pairs with 6, 1 with 5


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_einsum_weight_and_attention_forms(front_end):
    class E(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.w = nn.Parameter(torch.randn(6, 8))
            self.q = nn.Linear(6, 8)
            self.k = nn.Linear(6, 8)
            self.v = nn.Linear(6, 8)
            self.o = nn.Linear(8, 3)

        def forward(self, x):
            y = torch.einsum("bchw,oc->bohw", F.relu(self.a(x)), self.w)  # a 1x1 conv
            t = y.flatten(2).transpose(1, 2)
            b, n, _ = t.shape
            q, k, v = (f(t).view(b, n, 2, 4) for f in (self.q, self.k, self.v))
            att = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1)
            return self.o(torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, n, 8))

    torch.manual_seed(0)
    m = E().eval()
    head = torch.tensor([4, 5, 6, 7])
    masks = {"a.weight": mask_rows(m, "a.weight", [0, 3]), "w": mask_rows(m, "w", [2]),
             **{f"{p}.weight": torch.ones(8, 6).index_fill_(0, head, 0) for p in "qkv"}}
    res = assert_contract(m, masks, torch.randn(2, 3, 4, 4), front_end=front_end)
    assert removed_idx(res, m, "a.weight") == {0, 3} and removed_idx(res, m, "w") == {2}
    assert removed_idx(res, m, "q.weight") == set(head.tolist())


def test_einsum_that_sums_a_channel_dim_needs_zeros():
    """``bchw->bhw`` sums the channels: a removed one must be zero there (relu(bias) is not)."""
    m, res = _check(lambda m, y: torch.einsum("bchw->bhw", y).unsqueeze(1) * y, smaller=True)
    assert removed_idx(res, m, "a.weight") == {1, 4, 6}
    assert n_params(res.module) < n_params(m)


def test_random_filter_masks_through_every_op():
    for name, op in CHANNEL_WISE.items():
        torch.manual_seed(1)
        m = Block(op, extra=nn.Upsample(scale_factor=2) if name == "upsample_module" else None).eval()
        assert_contract(m, random_filter_masks(m, 0.5, 1), torch.randn(2, 3, 6, 6))


def test_einsum_attention_heads_for_the_pruner():
    """The head letter of a value-value einsum is marked as heads (as matmul's is): the
    dependency-aware pruner masks whole heads, and they go."""
    from slimc.prune import group_masks

    class MaxViTAttention(nn.Module):  # torchvision's RelativePositionalMultiHeadAttention, small
        def __init__(self, d=8, heads=2):
            super().__init__()
            self.inp = nn.Linear(4, d)
            self.to_qkv = nn.Linear(d, 3 * d)
            self.merge = nn.Linear(d, d)
            self.heads, self.dh = heads, d // heads
            self.bias = nn.Parameter(torch.randn(heads, 5, 5))

        def forward(self, x):
            x = self.inp(x)
            b, g, p, d = x.shape
            q, k, v = (t.reshape(b, g, p, self.heads, self.dh).permute(0, 1, 3, 2, 4)
                       for t in torch.chunk(self.to_qkv(x), 3, dim=-1))
            dot = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k * self.dh ** -0.5)
            out = torch.einsum("B G H I J, B G H J D -> B G H I D", F.softmax(dot + self.bias, dim=-1), v)
            return self.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, d))

    torch.manual_seed(0)
    m = MaxViTAttention().eval()
    x = torch.randn(2, 3, 5, 4)
    res = assert_contract(m, group_masks(m, x, ratio=0.5), x)
    assert not res.report["kept"], kept_reasons(res)
    assert len(removed_idx(res, m, "bias")) == 1 and res.module.get_parameter("to_qkv.weight").shape[0] == 12


def test_padded_positions_stay_when_their_readers_are_masked():
    """Zero padding makes its positions whatever is masked after it: a sink mask on a padded
    column cannot remove it."""
    torch.manual_seed(0)
    m = Block(lambda m, y: F.pad(y, (0, 0, 0, 0, 1, 1)), cin_b=10).eval()
    masks = {"b.weight": mask_rows(m, "b.weight", [0, 3, 9], dim=1)}
    res = assert_contract(m, masks, torch.randn(2, 3, 6, 6))
    assert removed_idx(res, m, "b.weight", 1) == {3}  # column 3 reads channel 2; 0 and 9 are padding
