"""Networks and embeddings, checked against independent NumPy forward passes and exact identities."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from ctjax._nets import ConvNet, FourierEmbedding, LinearNet, MLP, SinusoidalEmbedding
from ctjax._nets.base import apply_dropout, dropout_masks
from ctjax._nets.conv import _conv

from .helpers import assert_close


KINDS = ["mlp_fourier", "mlp_sinusoidal", "conv", "linear"]
# The sinusoidal MLP differs from the Fourier one only in the embedding (checked by the NumPy
# reference); the compile-heavy generic tests run one MLP.
NETS = ["mlp_fourier", "conv", "linear"]
DIMS = {"mlp_fourier": 3, "mlp_sinusoidal": 3, "conv": 64, "linear": 3}


def make_net(kind, key, dtype=jnp.float64, dropout=0.5):
    """The test networks. Dropout is on by default (it is inactive without a key), so that the same
    compiled functions serve the deterministic and the dropout tests."""
    if kind == "mlp_fourier":
        return MLP(3, width=16, depth=2, embedding_features=8, dropout=dropout, key=key, dtype=dtype)
    if kind == "mlp_sinusoidal":
        return MLP(3, 16, 2, "sinusoidal", 8, dropout, key=key, dtype=dtype)
    if kind == "conv":
        return ConvNet((1, 8, 8), channels=8, embedding_features=8, dropout=dropout, key=key, dtype=dtype)
    if kind == "linear":
        return LinearNet(3, key=key, init_scale=1.0, dtype=dtype)
    raise AssertionError(kind)


def normal(key, shape, dtype=jnp.float64):
    """Standard normals drawn with NumPy from a JAX key (no XLA kernel to compile per shape)."""
    rng = np.random.default_rng(np.asarray(jr.key_data(key)))
    return jnp.asarray(rng.standard_normal(shape).astype(dtype))


def perturb(net, key, scale=0.2):
    """Add scale * N(0, 1) to every parameter (so zero-initialised layers are exercised).

    The noise is drawn with NumPy: no XLA kernel to compile per parameter shape."""
    rng = np.random.default_rng(np.asarray(jr.key_data(key)))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    params = jax.tree_util.tree_map(
        lambda p: jnp.asarray((np.asarray(p) + scale * rng.standard_normal(p.shape)).astype(p.dtype)), params
    )
    return eqx.combine(params, static)


# One jitted evaluator each, so that each network structure compiles once per dtype.
_apply = eqx.filter_jit(lambda net, x, c, key: net(x, c, key=key))
_apply_batch = eqx.filter_jit(lambda net, xs, cs: jax.vmap(lambda x, c: net(x, c))(xs, cs))
_apply_batch_keys = eqx.filter_jit(lambda net, xs, cs, keys: jax.vmap(lambda x, c, k: net(x, c, key=k))(xs, cs, keys))


# ---------------------------------------------------------------- NumPy references


def np_(a):
    return np.asarray(a, dtype=np.float64)


def np_silu(u):
    return u / (1.0 + np.exp(-u))


def np_linear(lin, u):
    return np_(lin.weight) @ u + np_(lin.bias)


def np_fourier(emb, s):
    freqs = emb.scale * np_(jr.normal(jr.key(emb.seed), (emb.num_features // 2,), dtype=jnp.float32))
    arg = 2 * np.pi * freqs * s
    return np.concatenate([np.cos(arg), np.sin(arg)])


def np_sinusoidal(emb, s):
    half = emb.num_features // 2
    freqs = emb.max_period ** (-np.arange(half) / half)
    return np.concatenate([np.cos(freqs * s), np.sin(freqs * s)])


def np_embedding(emb, s):
    return np_fourier(emb, s) if isinstance(emb, FourierEmbedding) else np_sinusoidal(emb, s)


def np_mlp(net, x, c):
    cond = np_silu(np_linear(net.cond_out, np_silu(np_linear(net.cond_in, np_embedding(net.embedding, c)))))
    h = np_linear(net.inp, x)
    for b in net.blocks:
        h = h + np_linear(b.linear2, np_silu(np_linear(b.linear1, np_silu(h)) + np_linear(b.cond_proj, cond)))
    return np_linear(net.out, np_silu(h))


def np_conv(conv, u):
    w, b = np_(conv.weight), np_(conv.bias)
    k, s = w.shape[-1], conv.stride[0]
    pad = (k - 1) // 2
    up = np.pad(u, ((0, 0), (pad, pad), (pad, pad)))
    h_out, w_out = (u.shape[1] + 2 * pad - k) // s + 1, (u.shape[2] + 2 * pad - k) // s + 1
    out = np.zeros((w.shape[0], h_out, w_out))
    for i in range(k):
        for j in range(k):
            out += np.einsum("oi,ihw->ohw", w[:, :, i, j], up[:, i : i + s * h_out : s, j : j + s * w_out : s])
    return out + b


def np_group_norm(gn, u):
    y = u.reshape(gn.groups, -1)
    y = (y - y.mean(axis=1, keepdims=True)) / np.sqrt(y.var(axis=1, keepdims=True) + gn.eps)
    return np_(gn.weight)[:, None, None] * y.reshape(u.shape) + np_(gn.bias)[:, None, None]


def np_res_block(block, u, cond):
    h = np_conv(block.conv1, np_silu(np_group_norm(block.norm1, u))) + np_linear(block.cond_proj, cond)[:, None, None]
    h = np_conv(block.conv2, np_silu(np_group_norm(block.norm2, h)))
    return (u if block.skip is None else np_conv(block.skip, u)) + h


def np_convnet(net, x, c):
    cond = np_silu(np_linear(net.cond_out, np_silu(np_linear(net.cond_in, np_embedding(net.embedding, c)))))
    h = np_conv(net.conv_in, x.reshape(net.image_shape))
    skip = np_res_block(net.block_high, h, cond)
    h = np_res_block(net.block_low2, np_res_block(net.block_low1, np_conv(net.down, skip), cond), cond)
    h = np_conv(net.up, h.repeat(2, axis=1).repeat(2, axis=2))
    h = np_res_block(net.block_up, np.concatenate([h, skip]), cond)
    return np_conv(net.conv_out, np_silu(np_group_norm(net.norm_out, h))).reshape(-1)


def np_forward(net, x, c):
    if isinstance(net, MLP):
        return np_mlp(net, np_(x), float(c))
    if isinstance(net, ConvNet):
        return np_convnet(net, np_(x), float(c))
    return np_(net.weight) @ np_(x) + np_(net.bias)


# ---------------------------------------------------------------- embeddings


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("s", [0.0, 0.37, -2.5])
def test_fourier_matches_numpy(dtype, s):
    emb = FourierEmbedding(8, scale=3.0, seed=5)
    out = emb(jnp.asarray(s, dtype))
    assert out.shape == (8,) and out.dtype == dtype
    tol = 1e-12 if dtype == jnp.float64 else 1e-4
    assert_close(out, np_fourier(emb, float(jnp.asarray(s, dtype))), atol=tol)
    assert_close(jax.jit(emb)(jnp.asarray(s, dtype)), out, atol=tol)
    # Half cosines, half sines of the same arguments.
    assert_close(out[:4] ** 2 + out[4:] ** 2, np.ones(4), atol=tol)


def test_fourier_frequencies_are_not_leaves():
    emb = FourierEmbedding(16, scale=0.02, seed=7)
    assert jax.tree_util.tree_leaves(eqx.filter(emb, eqx.is_array)) == []
    assert jax.tree_util.tree_leaves(emb) == []
    # Same static seed: equal modules and equal features; another seed: different features.
    assert eqx.tree_equal(emb, FourierEmbedding(16, scale=0.02, seed=7))
    assert not np.allclose(FourierEmbedding(16, seed=8)(0.3), FourierEmbedding(16, seed=7)(0.3))
    # The frequencies are constants of the traced program, not random draws at run time.
    jaxpr = str(jax.make_jaxpr(emb)(0.3))
    assert "random" not in jaxpr and "threefry" not in jaxpr
    # Inside a network too: the MLP's and ConvNet's embeddings contribute no parameters.
    net = MLP(3, 8, 1, embedding_features=16, key=jr.key(0))
    assert jax.tree_util.tree_leaves(eqx.filter(net.embedding, eqx.is_array)) == []


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_sinusoidal_matches_numpy(dtype):
    emb = SinusoidalEmbedding(12, max_period=500.0)
    for s in [0.0, 0.8, 37.0, -4.0]:
        out = emb(jnp.asarray(s, dtype))
        assert out.shape == (12,) and out.dtype == dtype
        tol = 1e-12 if dtype == jnp.float64 else 5e-5
        assert_close(out, np_sinusoidal(emb, float(jnp.asarray(s, dtype))), atol=tol)
    assert_close(emb(0.0), np.r_[np.ones(6), np.zeros(6)])


@pytest.mark.parametrize("make", [lambda: FourierEmbedding(8, scale=2.0), lambda: SinusoidalEmbedding(8)])
@pytest.mark.parametrize(
    "in_dtype, out_dtype",
    [(jnp.bfloat16, jnp.float32), (jnp.float16, jnp.float32), (jnp.float32, jnp.float32), (jnp.float64, jnp.float64)],
)
def test_embedding_precision(make, in_dtype, out_dtype):
    emb = make()
    s = jnp.asarray(0.7, in_dtype)
    out = emb(s)
    assert out.dtype == out_dtype
    # A low-precision input is embedded in float32 at its (rounded) value, bit for bit.
    assert_close(out, emb(s.astype(out_dtype)))
    assert jax.jit(emb)(s).dtype == out_dtype


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: FourierEmbedding(7), "num_features"),
        (lambda: FourierEmbedding(0), "num_features"),
        (lambda: SinusoidalEmbedding(9), "num_features"),
        (lambda: FourierEmbedding(8, scale=0.0), "scale"),
        (lambda: SinusoidalEmbedding(8, max_period=-1.0), "max_period"),
        (lambda: FourierEmbedding(8)(jnp.zeros(2)), "s"),
    ],
)
def test_embedding_errors(make, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        make()


# ---------------------------------------------------------------- networks


@pytest.mark.parametrize("kind", KINDS)
def test_matches_numpy_reference(kind, getkey):
    net = perturb(make_net(kind, getkey()), getkey())
    for c in [0.0, -1.3, 0.9]:
        x = normal(getkey(), (DIMS[kind],))
        out = _apply(net, x, jnp.float64(c), None)
        assert out.shape == x.shape and out.dtype == jnp.float64
        assert_close(out, np_forward(net, x, c), rtol=1e-10, atol=1e-10)
        assert np.abs(np_(out)).max() > 1e-3


def test_eager_matches_jit(getkey):
    net = perturb(make_net("mlp_fourier", getkey()), getkey())
    x = normal(getkey(), (3,))
    assert_close(net(x, 0.2), _apply(net, x, jnp.float64(0.2), None), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("kind", NETS)
def test_shape_dtype_jit_vmap(kind, dtype, getkey):
    net = perturb(make_net(kind, getkey(), dtype=dtype), getkey())
    xs = normal(getkey(), (3, DIMS[kind]), dtype)
    cs = jnp.asarray([-0.5, 0.1, 1.2], dtype)
    single = [_apply(net, x, c, None) for x, c in zip(xs, cs)]
    assert all(out.shape == (DIMS[kind],) and out.dtype == dtype for out in single)
    batch = _apply_batch(net, xs, cs)
    assert batch.shape == xs.shape and batch.dtype == dtype
    tol = 1e-12 if dtype == jnp.float64 else 2e-5
    assert_close(batch, np.stack(single), rtol=tol, atol=tol)
    ref = np.stack([np_forward(net, x, c) for x, c in zip(xs, cs)])
    assert_close(batch, ref, rtol=1e-10 if dtype == jnp.float64 else 1e-3, atol=tol if dtype == jnp.float64 else 1e-4)


@pytest.mark.parametrize("kind", NETS)
def test_mixed_precision(kind, getkey):
    """A bfloat16 x runs in the float32 parameters' dtype and is cast back to bfloat16."""
    net = perturb(make_net(kind, getkey(), dtype=jnp.float32), getkey())
    x = normal(getkey(), (DIMS[kind],), jnp.bfloat16)
    c = jnp.float32(0.3)
    out = _apply(net, x, c, None)
    assert out.dtype == jnp.bfloat16
    assert_close(out.astype(jnp.float32), _apply(net, x.astype(jnp.float32), c, None).astype(jnp.bfloat16))
    # float64 inputs with float32 parameters are computed in float64 and stay float64.
    shape = eqx.filter_eval_shape(lambda n, x: n(x, c), net, jnp.zeros(DIMS[kind], jnp.float64))
    assert shape.dtype == jnp.float64 and shape.shape == (DIMS[kind],)


@pytest.mark.parametrize("kind", ["mlp_fourier", "mlp_sinusoidal", "conv"])
def test_zero_output_at_init(kind, getkey):
    net = make_net(kind, getkey())
    out_layer = net.conv_out if kind == "conv" else net.out
    assert not np.any(np.asarray(out_layer.weight)) and not np.any(np.asarray(out_layer.bias))
    for c in [-2.0, 0.5]:
        x = normal(getkey(), (DIMS[kind],))
        assert np.array_equal(np.asarray(_apply(net, x, jnp.float64(c), None)), np.zeros(DIMS[kind]))
    lin = LinearNet(4, key=getkey())
    assert np.array_equal(np.asarray(lin(normal(getkey(), (4,)), 1.0)), np.zeros(4))


def test_linear_net_is_affine_and_ignores_c_noise(getkey):
    net = LinearNet(4, key=getkey(), init_scale=0.7)
    x = normal(getkey(), (4,))
    out = net(x, 0.1)
    assert_close(out, np_(net.weight) @ np_(x) + np_(net.bias), rtol=1e-14, atol=1e-14)
    assert np.array_equal(np.asarray(out), np.asarray(net(x, -5.0)))
    assert np.array_equal(np.asarray(out), np.asarray(net(x, 0.1, key=getkey())))
    assert np.array_equal(np.asarray(out), np.asarray(net.weight @ x + net.bias))
    # init_scale multiplies standard normals: the entries are far from zero and of that scale.
    entries = np.r_[np.asarray(net.weight).ravel(), np.asarray(net.bias)]
    assert 0.2 < entries.std() < 2.0


@pytest.mark.parametrize("kind", ["mlp_fourier", "conv"])
def test_dropout(kind, getkey):
    net = perturb(make_net(kind, getkey(), dropout=0.5), getkey())
    x = normal(getkey(), (DIMS[kind],))
    c = jnp.float64(0.4)
    k1, k2 = getkey(), getkey()
    det = _apply(net, x, c, None)
    assert np.array_equal(np.asarray(det), np.asarray(_apply(net, x, c, None)))
    assert_close(det, np_forward(net, x, c), rtol=1e-10, atol=1e-10)  # key=None: no dropout at all
    a, b = _apply(net, x, c, k1), _apply(net, x, c, k1)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(a, _apply(net, x, c, k2))
    assert not np.allclose(a, det)
    if kind == "conv":
        return  # the rest exercises shared code paths (one compile each); the MLP covers them.
    # Batched keys under vmap give the per-example results.
    x2, c2 = normal(getkey(), x.shape), jnp.float64(-1.1)
    batch = _apply_batch_keys(net, jnp.asarray(np.stack([x, x2])), jnp.asarray([c, c2]), jnp.stack([k1, k2]))
    assert_close(batch[0], a, rtol=1e-12, atol=1e-12)
    assert_close(batch[1], _apply(net, x2, c2, k2), rtol=1e-12, atol=1e-12)
    # dropout=0 with a key is exactly key=None.
    net0 = perturb(make_net(kind, getkey(), dropout=0.0), getkey())  # mlp_fourier only
    assert np.array_equal(np.asarray(_apply(net0, x, c, k1)), np.asarray(_apply(net0, x, c, None)))


def test_dropout_mask(getkey):
    shapes = [(20000,), (3, 5), (2,)]
    masks = dropout_masks(getkey(), 0.25, shapes)
    assert [m.shape for m in masks] == shapes and all(m.dtype == jnp.bool_ for m in masks)
    h = jnp.arange(1.0, 20001.0)
    out = np.asarray(apply_dropout(h, 0.25, masks[0]))
    kept = np.asarray(masks[0])
    # Dropped entries are 0, kept entries are scaled by 1/(1 - rate) exactly; about 75% are kept.
    assert np.array_equal(out[~kept], np.zeros((~kept).sum()))
    assert_close(out[kept], np.asarray(h)[kept] / 0.75, rtol=1e-15)
    assert abs(kept.mean() - 0.75) < 0.015
    assert dropout_masks(None, 0.25, shapes) == (None, None, None)
    assert dropout_masks(getkey(), 0.0, shapes) == (None, None, None)
    assert apply_dropout(h, 0.25, None) is h


_grad = eqx.filter_jit(eqx.filter_grad(lambda net, x, c: jnp.sum((net(x, c) - x) ** 2)))


@pytest.mark.parametrize("kind", NETS)
def test_gradients(kind, getkey):
    # float64 (a precise finite difference), sharing the forward pass compiled by test_matches_numpy_reference.
    net = perturb(make_net(kind, getkey()), getkey())
    x, c = normal(getkey(), (DIMS[kind],)), jnp.float64(-0.8)
    grads = _grad(net, x, c)
    leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_array))
    assert len(leaves) == len(jax.tree_util.tree_leaves(eqx.filter(net, eqx.is_array)))
    # Every parameter array receives a finite, nonzero gradient.
    for leaf in leaves:
        assert np.all(np.isfinite(np.asarray(leaf))) and np.any(np.asarray(leaf) != 0)
    # The gradient agrees with a central finite difference of the (already compiled) forward pass
    # along a random direction v (built in NumPy: nothing new to compile).
    rng = np.random.default_rng(np.asarray(jr.key_data(getkey())))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    v = jax.tree_util.tree_map(lambda p: rng.standard_normal(p.shape), params)
    eps = 1e-6

    def loss(step):
        moved = jax.tree_util.tree_map(lambda p, d: jnp.asarray((np.asarray(p) + step * d).astype(p.dtype)), params, v)
        out = _apply(eqx.combine(moved, static), x, c, None)
        return np.sum((np.asarray(out, np.float64) - np.asarray(x, np.float64)) ** 2)

    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    directional = sum(
        float(np.sum(np.asarray(g) * d))
        for g, d in zip(
            jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array)), jax.tree_util.tree_leaves(v)
        )
    )
    assert_close(directional, fd, rtol=1e-6, atol=1e-8)


def test_mlp_structure(getkey):
    emb = FourierEmbedding(8, scale=0.02, seed=3)
    net = MLP(5, width=7, depth=3, embedding=emb, key=getkey())
    assert net.embedding is emb and net.dim == 5
    sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(eqx.filter(net, eqx.is_array))]
    # cond_in, cond_out, inp, 3 x (linear1, linear2, cond_proj), out: weights and biases.
    assert sum(sizes) == (8 * 7 + 7) + (7 * 7 + 7) + (5 * 7 + 7) + 3 * 3 * (7 * 7 + 7) + (7 * 5 + 5)
    # depth=0: F = Lin(SiLU(Lin(x))), no conditioning.
    flat = perturb(MLP(2, width=4, depth=0, key=getkey()), getkey())
    x = normal(getkey(), (2,))
    assert_close(_apply(flat, x, jnp.float64(0.0), None), np_forward(flat, x, 0.0), rtol=1e-12, atol=1e-12)


def test_initialisation_law(getkey):
    """Linear/conv parameters are uniform on +-1/sqrt(fan_in) (Equinox's default law), independent
    across layers; GroupNorm starts at weight 1, bias 0."""
    net = MLP(4, width=96, depth=1, key=getkey())
    conv = ConvNet((1, 8, 8), channels=16, key=getkey())
    layers = [net.cond_out, net.blocks[0].linear1, net.blocks[0].linear2, conv.block_low2.conv2]
    draws = []
    for layer in layers:
        w, b = np.asarray(layer.weight), np.asarray(layer.bias)
        lim = 1 / np.sqrt(np.prod(w.shape[1:]))
        assert np.abs(w).max() <= lim and np.abs(b).max() <= lim
        assert abs(w.std() - lim / np.sqrt(3)) < 0.05 * lim and abs(w.mean()) < 0.03 * lim
        draws.append(w.ravel()[:1000] / lim)
    assert np.abs(np.corrcoef(draws) - np.eye(len(draws))).max() < 0.15
    assert np.array_equal(np.asarray(conv.block_up.norm1.weight), np.ones(48))
    assert np.array_equal(np.asarray(conv.block_up.norm1.bias), np.zeros(48))
    assert conv.block_up.norm1.groups == 8 and conv.block_high.skip is None and conv.block_up.skip is not None

    # Built under jit and vmap (an ensemble), from traced keys: the same parameters as built eagerly.
    keys = jr.split(getkey(), 2)
    ensemble = eqx.filter_jit(eqx.filter_vmap(lambda k: MLP(4, 8, 1, key=k)))(keys)
    for i in range(2):
        member = jax.tree_util.tree_map(lambda p: p[i], eqx.filter(ensemble, eqx.is_array))
        eager = eqx.filter(MLP(4, 8, 1, key=keys[i]), eqx.is_array)
        for a, b in zip(jax.tree_util.tree_leaves(member), jax.tree_util.tree_leaves(eager), strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))

    # Different keys, different parameters; the same key, the same parameters.
    def flat(key):
        return np.concatenate([np.ravel(p) for p in jax.tree_util.tree_leaves(MLP(4, 8, 1, key=key))])

    assert np.array_equal(flat(jr.key(1)), flat(jr.key(1)))
    assert np.all(flat(jr.key(1))[:-36] != flat(jr.key(2))[:-36])  # all but the zero output layer


@pytest.mark.parametrize("k, stride", [(3, 1), (3, 2), (1, 1)])
def test_im2col_convolution_matches_lax_conv(k, stride, getkey):
    """The CPU form (im2col matrix product) and the other backends' form (channels-last lax.conv)
    of every convolution ConvNet uses agree, on an odd-sized input too."""
    layer = perturb(
        eqx.nn.Conv2d(5, 7, k, stride=stride, padding=(k - 1) // 2, key=getkey(), dtype=jnp.float64), getkey()
    )
    x = normal(getkey(), (7, 6, 5))
    a, b = _conv(layer, x, im2col=True), _conv(layer, x, im2col=False)
    assert a.shape == b.shape == ((7 - 1) // stride + 1, (6 - 1) // stride + 1, 7)
    assert_close(a, b, rtol=1e-12, atol=1e-12)
    # And both are the NumPy reference (channels first).
    assert_close(
        np.transpose(np.asarray(a), (2, 0, 1)),
        np_conv(layer, np.transpose(np.asarray(x), (2, 0, 1))),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("shape", [(2, 4, 6), (3, 8, 8), (1, 2, 2)])
def test_conv_shapes(shape, getkey):
    net = ConvNet(shape, channels=12, embedding_features=8, key=getkey(), dtype=jnp.float32)
    dim = int(np.prod(shape))
    assert net.dim == dim
    out = eqx.filter_eval_shape(lambda n, x: n(x, 0.0), net, jnp.zeros(dim, jnp.float32))
    assert out.shape == (dim,) and out.dtype == jnp.float32


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda k: MLP(0, key=k), "dim"),
        (lambda k: MLP(2, width=0, key=k), "width"),
        (lambda k: MLP(2, depth=-1, key=k), "depth"),
        (lambda k: MLP(2, dropout=1.0, key=k), "dropout"),
        (lambda k: MLP(2, dropout=-0.1, key=k), "dropout"),
        (lambda k: MLP(2, embedding="gaussian", key=k), "embedding"),  # pyright: ignore[reportArgumentType]
        (lambda k: MLP(2, embedding_features=5, key=k), "embedding_features"),
        (lambda k: ConvNet(embedding_features=0, key=k), "embedding_features"),
        (lambda k: MLP(2, embedding=lambda s: s, key=k), "embedding"),  # pyright: ignore[reportArgumentType]
        (lambda k: MLP(2, embedding=eqx.nn.Identity(), key=k), "embedding"),
        (lambda k: ConvNet((1, 7, 8), key=k), "image_shape"),
        (lambda k: ConvNet((8, 8), key=k), "image_shape"),  # pyright: ignore[reportArgumentType]
        (lambda k: ConvNet(channels=0, key=k), "channels"),
        (lambda k: ConvNet(dropout=1.5, key=k), "dropout"),
        (lambda k: LinearNet(0, key=k), "dim"),
        (lambda k: LinearNet(2, key=k, init_scale=-1.0), "init_scale"),
    ],
)
def test_constructor_errors(make, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        make(jr.key(0))


@pytest.mark.parametrize("kind", ["mlp_fourier", "conv", "linear"])
def test_call_errors(kind, getkey):
    net = make_net(kind, getkey())
    d = DIMS[kind]
    with pytest.raises(ValueError, match="`x`.*jax.vmap"):
        net(jnp.zeros((2, d)), 0.0)
    with pytest.raises(ValueError, match="`x`"):
        net(jnp.zeros(d + 1), 0.0)
    with pytest.raises(ValueError, match="`c_noise`"):
        net(jnp.zeros(d), jnp.zeros(2))
