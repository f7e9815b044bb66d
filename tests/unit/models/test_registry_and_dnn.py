import subprocess
import sys

import numpy as np
import pytest
import torch

from models import MODEL_REGISTRY, Reranker, get_model_class, register, training_stage_of
from models.dnn import DNNReranker
from models.dnn_numpy import history_context_batch_np, numpy_params, score_and_grad_batch_np


def make_model(n_users: int = 7, n_items: int = 11, **kw) -> DNNReranker:
    torch.manual_seed(0)
    model = DNNReranker(n_users, n_items, dim=8, history_len=5, mlp_hidden=[16, 8], **kw)
    # Random, non-trivial weights everywhere so shape and gradient checks see real values.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        model.user_emb.weight[0].zero_()
        model.hist_emb.weight[0].zero_()
    return model


def test_registry_lookup() -> None:
    assert get_model_class("dnn") is DNNReranker
    assert MODEL_REGISTRY["dnn"] is DNNReranker
    assert DNNReranker.name == "dnn"


def test_unknown_kind_lists_known_names() -> None:
    with pytest.raises(KeyError, match="dnn"):
        get_model_class("no-such-kind")


def test_a_kind_declares_its_defaults_and_training_stage_where_it_is_registered() -> None:
    from models.gan import GANReranker
    from trainer.gan import fit_gan

    gan = get_model_class("gan")
    assert gan is GANReranker and gan.default_hparams["serve"] == "generator"
    assert training_stage_of(gan) is fit_gan
    # Not inherited: the dnn kind GANReranker derives from has neither.
    assert dict(DNNReranker.default_hparams) == {} and training_stage_of(DNNReranker) is None
    with pytest.raises(TypeError):
        gan.default_hparams["serve"] = "discriminator"  # type: ignore[index]


def test_register_checks_the_stage_reference() -> None:
    with pytest.raises(ValueError, match="module:function"):
        register("bad-stage", stage="trainer.gan.fit_gan")
    assert "bad-stage" not in MODEL_REGISTRY

    @register("missing-stage", stage="trainer.gan:no_such_function")
    class Missing(DNNReranker):
        pass

    try:
        with pytest.raises(TypeError, match="no_such_function"):
            training_stage_of(Missing)
    finally:
        del MODEL_REGISTRY["missing-stage"]


def test_importing_models_does_not_import_the_trainer() -> None:
    code = "import sys, models; print(sorted(m for m in sys.modules if m.split('.')[0] == 'trainer'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_register_refuses_a_second_class_under_a_taken_name() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register("dnn")
        class Other(Reranker):
            pass

    assert get_model_class("dnn") is DNNReranker


def test_unknown_hparam_is_rejected() -> None:
    with pytest.raises(TypeError, match="dimm"):
        DNNReranker(3, 4, dimm=8)


def test_forward_shapes_and_dim() -> None:
    model = make_model()
    B, N = 3, 6
    uv = model.user_vectors()[torch.tensor([1, 2, 3])]
    hist = torch.randint(0, 12, (B, 5))
    items = torch.randint(1, 12, (B, N))
    u = model.user_repr(uv, hist)
    assert model.dim == 8
    assert model.user_vectors().shape == (8, 8)
    assert u.shape == (B, 8)
    s = model.score(u, items)
    assert s.shape == (B, N) and s.dtype == torch.float32
    assert torch.allclose(model(uv, hist, items), s)


def test_unknown_user_and_item_and_empty_history_are_finite() -> None:
    model = make_model()
    model.fill_unknown_rows()
    assert torch.all(model.user_vectors()[0] == 0)
    uv = torch.zeros(2, 8)
    hist = torch.zeros(2, 5, dtype=torch.int64)
    items = torch.tensor([[0, 3], [0, 0]])
    s = model(uv, hist, items)
    assert torch.isfinite(s).all()
    # Unknown item = mean item: its score under a zero user vector equals the mean bias path.
    assert torch.allclose(model.item_emb.weight[0], model.item_emb.weight[1:].mean(0))
    assert torch.allclose(model.item_bias.weight[0], model.item_bias.weight[1:].mean(0))


def test_history_order_matters_and_padding_is_ignored() -> None:
    model = make_model()
    with torch.no_grad():
        model.pos_logits.copy_(torch.arange(5.0))
    uv = torch.zeros(1, 8)
    items = torch.arange(1, 12).unsqueeze(0)
    a = model(uv, torch.tensor([[0, 0, 0, 2, 9]]), items)
    b = model(uv, torch.tensor([[0, 0, 0, 9, 2]]), items)
    assert not torch.allclose(a, b)
    # Longer input histories keep the last H; shorter ones use the most recent position weights.
    c = model(uv, torch.tensor([[4, 4, 4, 0, 0, 0, 2, 9]]), items)
    d = model(uv, torch.tensor([[2, 9]]), items)
    assert torch.allclose(a, c) and torch.allclose(a, d)


def random_dnn(hidden: list[int], vocab: tuple[str, ...]) -> DNNReranker:
    """A small DNN (7 users, 11 items, dim 8, history 5) with large random weights, so every
    layer and the feature terms matter."""
    torch.manual_seed(0)
    model = DNNReranker(7, 11, dim=8, history_len=5, mlp_hidden=hidden, feature_vocab=vocab)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        if vocab:
            model.set_item_features(torch.arange(1, 12), torch.rand(11, len(vocab)))
    return model


@pytest.mark.parametrize("hidden,vocab", [([16, 8], ()), ([4], ()), ([], ()), ([4], ("g:a", "g:b", "g:c"))])
def test_numpy_twin_matches_torch_scores_and_autograd_gradient(hidden: list[int], vocab: tuple[str, ...]) -> None:
    model = random_dnn(hidden, vocab)
    p = numpy_params(model)
    hist = np.array([[0, 3, 7, 7, 1], [0, 0, 0, 0, 0], [4, 4, 2, 11, 6]], dtype=np.int64)
    items = np.array([[2, 5, 0, 9], [1, 1, 3, 10], [11, 6, 2, 7]], dtype=np.int64)
    vec = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    y = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)

    ctx = history_context_batch_np(p, hist)
    s_np, g_np = score_and_grad_batch_np(p, vec + ctx, items, lambda s: 1 / (1 + np.exp(-s)) - y)

    v = torch.from_numpy(vec).requires_grad_(True)
    s_t = model(v, torch.from_numpy(hist), torch.from_numpy(items))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(s_t, torch.from_numpy(y), reduction="sum")
    (g_t,) = torch.autograd.grad(loss, v)
    np.testing.assert_allclose(s_np, s_t.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_np, g_t.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hidden,vocab", [([16, 8], ()), ([], ()), ([4], ("g:a", "g:b"))])
def test_numpy_twins_give_a_row_the_same_bits_in_any_batch(hidden: list[int], vocab: tuple[str, ...]) -> None:
    model = random_dnn(hidden, vocab)
    p = numpy_params(model)
    rng = np.random.default_rng(2)
    hist = rng.integers(0, 12, size=(6, 5))
    hist[0] = 0  # no history: zero context
    items = rng.integers(0, 12, size=(6, 4))
    vec = rng.normal(size=(6, 8)).astype(np.float32)
    y = (rng.random((6, 4)) < 0.3).astype(np.float32)

    ctx = history_context_batch_np(p, hist)
    s, g = score_and_grad_batch_np(p, vec + ctx, items, lambda s: 1 / (1 + np.exp(-s)) - y)
    assert ctx.shape == (6, 8) and not ctx[0].any() and s.shape == (6, 4) and g is not None and g.shape == (6, 8)
    for b in range(6):
        one = slice(b, b + 1)
        ctx_b = history_context_batch_np(p, hist[one])
        s_b, g_b = score_and_grad_batch_np(
            p, vec[one] + ctx_b, items[one], lambda s, one=one: 1 / (1 + np.exp(-s)) - y[one]
        )
        assert np.array_equal(ctx[one], ctx_b) and np.array_equal(s[one], s_b) and np.array_equal(g[one], g_b)
    # And in other company: the rows reversed.
    back = slice(None, None, -1)
    ctx_r = history_context_batch_np(p, hist[back])
    s_r, g_r = score_and_grad_batch_np(p, vec[back] + ctx_r, items[back], lambda s: 1 / (1 + np.exp(-s)) - y[back])
    assert np.array_equal(ctx_r[back], ctx) and np.array_equal(s_r[back], s) and np.array_equal(g_r[back], g)
    assert score_and_grad_batch_np(p, vec + ctx, items)[1] is None


@pytest.mark.parametrize("hidden", [[], [6]])
def test_score_all_equals_score_on_every_row(hidden: list[int]) -> None:
    torch.manual_seed(1)
    model = DNNReranker(4, 9, dim=8, history_len=3, mlp_hidden=hidden, feature_vocab=["g:x", "g:y"])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        model.set_item_features(torch.arange(1, 10), torch.rand(9, 2))
    u = model.user_repr(torch.randn(5, 8), torch.randint(0, 10, (5, 3)))
    want = model.score(u, torch.arange(10).expand(5, -1))
    got = model.score_all(u, chunk=2)
    assert got.shape == (5, 10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
