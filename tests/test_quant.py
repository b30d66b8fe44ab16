import pytest
import torch

from sft_lessons import quant as Q

# bitsandbytes' hard-coded NF4 table (functional.get_4bit_type("nf4")), copied here to test our construction.
BNB_NF4 = [-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
           0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0]  # fmt: skip


def test_nf4_levels_are_the_normal_quantile_code_book():
    levels = Q.nf4_levels()
    assert levels.shape == (16,)
    assert torch.allclose(levels, torch.tensor(BNB_NF4), atol=1e-6)
    assert (levels < 0).sum() == 7 and (levels > 0).sum() == 8 and (levels == 0).sum() == 1


def test_format_code_books():
    assert Q.fp4_levels().shape == (16,) and Q.fp4_levels().abs().max() == 1
    assert Q.int8_levels().shape == (255,)
    with pytest.raises(ValueError, match="valid: nf4, fp4, int8"):
        Q.levels_for("int4")


@pytest.mark.parametrize("shape", [(128, 64), (3, 70), (1000,)])  # whole blocks, a ragged tail, 1-D
def test_nf4_round_trip_error_bound(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    q = Q.nf4_quantize(x)
    y = Q.nf4_dequantize(q)
    assert y.shape == x.shape and q.codes.dtype == torch.uint8 and int(q.codes.max()) < 16
    # each value lies within half the widest NF4 gap (0.304, between -1 and -0.696) times its block absmax
    absmax = Q._blocks(x, 64).abs().amax(1).repeat_interleave(64)[: x.numel()].view(shape)
    assert ((y - x).abs() <= absmax * 0.1520 + 1e-6).all()
    assert (y - x).pow(2).mean().sqrt() < 0.11  # relative RMSE of NF4 on N(0,1) is about 0.09


def test_quantizing_the_levels_is_exact():
    levels = Q.nf4_levels()
    q = Q.nf4_quantize(levels.repeat(4))  # one block holding every level; absmax = 1
    assert torch.equal(Q.nf4_dequantize(q), levels.repeat(4))


def test_double_quantization_small_extra_error_and_fewer_bytes():
    torch.manual_seed(0)
    x = torch.randn(256, 256) * 0.02
    single, double = Q.nf4_quantize(x), Q.nf4_quantize(x, double_quant=True)
    assert torch.equal(single.codes, double.codes)  # DQ compresses the constants, not the codes
    absmax = Q.double_dequantize(double.double)
    assert (absmax - single.absmax).abs().max() < 0.01 * single.absmax.max()
    e1 = (Q.nf4_dequantize(single) - x).pow(2).mean()
    e2 = (Q.nf4_dequantize(double) - x).pow(2).mean()
    assert e2 < 1.05 * e1
    assert double.storage_bytes() < single.storage_bytes() < x.numel() * 4 / 7
    assert Q.bits_per_parameter() == 4.5
    assert Q.bits_per_parameter(double_quant=True) == pytest.approx(4.127, abs=1e-3)


def test_pack_unpack():
    codes = torch.tensor([1, 15, 0, 7, 9], dtype=torch.uint8)
    packed = Q.pack_4bit(codes)
    assert packed.tolist() == [0x1F, 0x07, 0x90]
    assert Q.unpack_4bit(packed)[:5].tolist() == codes.tolist()


def test_error_ordering_int8_nf4_fp4():
    torch.manual_seed(0)
    x = torch.randn(64 * 256)
    err = {f: Q.quantization_error(x, f)["relative_rmse"] for f in Q.FORMATS}
    assert err["int8"] < err["nf4"] < err["fp4"]


@pytest.mark.parametrize("double_quant", [False, True])
def test_parity_with_bitsandbytes_nf4(double_quant):
    pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    x = torch.randn(96, 200) * 0.05  # 19200 values = 300 blocks
    q = Q.nf4_quantize(x, double_quant=double_quant)
    codes, y_bnb, _ = Q.bnb_quantize_4bit(x, "nf4", double_quant=double_quant)
    agree = (codes == q.codes[: x.numel()]).float().mean().item()
    assert agree > 0.999  # identical but for values exactly on a decision boundary
    y = Q.nf4_dequantize(q)
    # stated tolerance: identical without DQ (float rounding only); with DQ both round absmax to 8 bits, differently
    atol = 2e-3 if double_quant else 1e-6
    assert (y - y_bnb).abs().max() < atol
    rmse, rmse_bnb = (y - x).pow(2).mean().sqrt(), (y_bnb - x).pow(2).mean().sqrt()
    assert abs(rmse - rmse_bnb) < 0.02 * rmse_bnb


def test_parity_with_bitsandbytes_fp4_values():
    pytest.importorskip("bitsandbytes")
    torch.manual_seed(1)
    x = torch.randn(64, 64)
    _, y_bnb, _ = Q.bnb_quantize_4bit(x, "fp4")  # fp4 codes are in bit-pattern order, so compare values
    y = Q.dequantize_blockwise(Q.quantize_blockwise(x, Q.fp4_levels()))
    assert torch.allclose(y, y_bnb, atol=1e-6)


def test_bad_blocksize():
    with pytest.raises(ValueError, match="blocksize"):
        Q.nf4_quantize(torch.randn(8), blocksize=0)


def test_keep_4bit_weights_unpacked_keeps_the_input_gradient():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    fast_path = bool(getattr(layer, "support_avx512bf16_for_cpu", False))
    assert Q.keep_4bit_weights_unpacked(torch.nn.Sequential(layer)) == int(fast_path)
    x = torch.randn(3, 128)
    layer.eval()
    with torch.no_grad():
        layer(x)  # the evaluation pass that would repack the weight
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    x.requires_grad_(True)
    layer(x).sum().backward()
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)  # (64, 128)
    assert torch.allclose(x.grad, torch.ones(3, 64) @ weight, atol=1e-5)
