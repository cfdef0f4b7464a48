"""The MoE layer: grouped experts equal a per-expert loop, capacity routing drops what it should, the balancing
losses have their textbook values and train the router, and the accounting counts active parameters."""

import math

import pytest
import torch

from shoal.config import ModelConfig, MoEConfig
from shoal.models import moe as moe_module
from shoal.models.moe import DROPPED, PASSES, MoE, Routing, is_moe_layer, loop_reference, sort_by_expert
from shoal.models.transformer import Transformer

D_MODEL = 32


def make_moe(seed: int = 0, **moe_settings) -> MoE:
    settings = {"n_experts": 6, "top_k": 2, "d_ff": 24, "aux_loss_coef": 0.0, "z_loss_coef": 0.0, **moe_settings}
    torch.manual_seed(seed)
    layer = MoE(ModelConfig(vocab_size=64, d_model=D_MODEL, n_heads=4, d_ff=64, moe=MoEConfig(**settings)))
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)  # a random router: random routing
        layer.router.expert_bias[3] = -1e9  # expert 3 is never chosen: a group of zero tokens
    return layer.train()


def forward_and_grads(layer: MoE, x: torch.Tensor, forward) -> tuple[torch.Tensor, ...]:
    layer.zero_grad()
    x = x.detach().clone().requires_grad_()
    y = forward(x)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))  # a weighting that is different for every output
    return (y.detach(), x.grad, *[p.grad for p in layer.parameters()])


@pytest.mark.parametrize("score_func, top_k", [("softmax", 2), ("sigmoid", 2), ("softmax", 1), ("sigmoid", 3)])
@pytest.mark.parametrize("kernel", ["grouped_mm", "looped", "unaligned"])
def test_grouped_layer_equals_the_per_expert_loop(score_func, top_k, kernel, monkeypatch):
    # "unaligned": 10 hidden units are 40-byte rows, which grouped GEMM kernels refuse; the layer loops instead.
    layer = make_moe(score_func=score_func, top_k=top_k, **({"d_ff": 10} if kernel == "unaligned" else {}))
    x = torch.randn(3, 10, D_MODEL)
    counts = sort_by_expert(layer.router(x.view(-1, D_MODEL)).experts, 6)[1]
    assert counts[3] == 0 and (counts > 0).sum() == 5  # one expert idle, the others busy
    if kernel == "looped":
        monkeypatch.setattr(moe_module, "_grouped_mm_runs", lambda x, w1: False)
    got = forward_and_grads(layer, x, layer)
    expected = forward_and_grads(layer, x, lambda x: loop_reference(layer, x))
    names = ["output", "input grad", *[name for name, _ in layer.named_parameters()]]
    for name, a, b in zip(names, got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")  # sum order
    assert got[-1][3].abs().sum() == 0  # the idle expert's weights get no gradient (w3 here)


def test_groups_padded_to_an_alignment_give_the_same_result():
    """CUDA grouped GEMMs run on groups padded to 16 rows; the padding rows must not change any value or gradient."""
    layer = make_moe()
    x = torch.randn(40, D_MODEL)
    experts = torch.randint(0, 6, (40,))
    experts[experts == 3] = 4  # an empty group between busy ones
    order, counts = sort_by_expert(experts, 6)
    results = []
    for align in (1, 16):
        layer.zero_grad()
        xs = x[order].clone().requires_grad_()
        y = layer.experts(xs, counts, align)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        results.append((y.detach(), xs.grad, layer.experts.w1.grad.clone(), layer.experts.w2.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_capacity_routing_keeps_first_choices_first_and_counts_drops():
    layer = make_moe(capacity_factor=0.5)
    x = torch.randn(48, D_MODEL)
    routing = layer.router(x)
    y, dropped = layer._capacity_forward(x, routing)
    n, k, e = 48, 2, 6
    capacity = math.ceil(0.5 * n * k / e)
    # By hand: each expert takes assignments in order (all first choices by token, then all second choices) until
    # it is full; a dropped assignment adds nothing to its token.
    expected = torch.zeros_like(x)
    taken = [0] * e
    with torch.no_grad():
        w1, w2, w3 = layer.experts.w1, layer.experts.w2, layer.experts.w3
        for choice in range(k):
            for token in range(n):
                expert = int(routing.experts[token, choice])
                if taken[expert] == capacity:
                    continue
                taken[expert] += 1
                h = torch.nn.functional.silu(x[token] @ w1[expert].T) * (x[token] @ w3[expert].T)
                expected[token] += routing.weights[token, choice] * (h @ w2[expert].T)
    counts = sort_by_expert(routing.experts, e)[1]
    assert int(dropped) == sum(max(0, int(c) - capacity) for c in counts) > 0
    torch.testing.assert_close(y.detach(), expected, rtol=1e-5, atol=1e-5)
    # With room for everything, capacity routing is the dropless layer.
    roomy = make_moe(capacity_factor=float(e))
    torch.testing.assert_close(roomy(x), loop_reference(roomy, x), rtol=1e-5, atol=1e-6)
    assert roomy.stats[6 + DROPPED] == 0
    # Evaluation routes dropless: a token's output must not depend on what else is in its batch.
    layer.eval()
    torch.testing.assert_close(layer(x), loop_reference(layer, x), rtol=1e-5, atol=1e-5)


def test_balancing_losses_have_their_textbook_values():
    layer = make_moe(n_experts=4, top_k=1)
    n = 8
    uniform = Routing(experts=torch.arange(n).remainder(4).view(n, 1), weights=torch.ones(n, 1),
                      logits=torch.zeros(n, 4), scores=torch.full((n, 4), 0.25))
    aux, z = layer._balancing_losses(uniform)
    assert aux.item() == pytest.approx(1.0)  # balanced: E * sum(1/E * 1/E) = 1
    assert z.item() == pytest.approx(math.log(4) ** 2)  # logsumexp of 4 zero logits
    collapsed = Routing(experts=torch.zeros(n, 1, dtype=torch.long), weights=torch.ones(n, 1),
                        logits=torch.tensor([[10.0, 0, 0, 0]]).repeat(n, 1),
                        scores=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1))
    aux, z = layer._balancing_losses(collapsed)
    assert aux.item() == pytest.approx(4.0)  # everything on one expert: E
    assert z.item() == pytest.approx(torch.logsumexp(torch.tensor([10.0, 0, 0, 0]), 0).item() ** 2)


def test_balancing_losses_train_the_router_with_the_trainers_scale():
    layer = make_moe(aux_loss_coef=0.5, z_loss_coef=0.1)
    layer.aux_loss_scale = 0.25
    x = torch.randn(20, D_MODEL)
    layer(x).sum().backward()
    got = layer.router.gate.weight.grad.clone()
    # The same gradient from the explicit loss: output + scale * (aux_coef * aux + z_coef * z).
    layer.zero_grad()
    aux, z = layer._balancing_losses(layer.router(x))
    (loop_reference(layer, x).sum() + 0.25 * (0.5 * aux + 0.1 * z)).backward()
    torch.testing.assert_close(got, layer.router.gate.weight.grad, rtol=1e-4, atol=1e-5)
    layer.zero_grad()
    loop_reference(layer, x).sum().backward()
    assert (got - layer.router.gate.weight.grad).abs().max() > 1e-3  # the balancing losses did contribute


def test_stats_count_training_passes_only_and_stay_out_of_checkpoints():
    layer = make_moe()
    x = torch.randn(2, 7, D_MODEL)
    layer(x)
    assert layer.stats[:6].sum() == 2 * 7 * 2 and layer.stats[6 + PASSES] == 1
    layer.eval()
    layer(x)
    assert layer.stats[6 + PASSES] == 1  # evaluation and generation do not count
    assert "router.expert_bias" in layer.state_dict() and "stats" not in layer.state_dict()
    layer.reset_stats()
    assert layer.stats.sum() == 0


def test_bias_balancing_steers_the_choice_toward_starved_experts():
    layer = make_moe(n_experts=4, top_k=1)
    with torch.no_grad():
        layer.router.expert_bias.zero_()
    x = torch.randn(64, D_MODEL)
    before = sort_by_expert(layer.router(x).experts, 4)[1].float()
    for _ in range(200):
        layer.update_bias(sort_by_expert(layer.router(x).experts, 4)[1].float(), speed=0.01)
    after = sort_by_expert(layer.router(x).experts, 4)[1].float()
    assert after.max() / after.mean() < before.max() / before.mean()
    # The bias picks experts; it does not weigh them: the weights are still the raw router scores.
    routing = layer.router(x)
    assert torch.equal(routing.weights, routing.scores.gather(-1, routing.experts))


def small_moe_model(**moe_settings) -> Transformer:
    torch.manual_seed(0)
    moe = MoEConfig(**{"n_experts": 4, "top_k": 2, "d_ff": 16, "every": 2, **moe_settings})
    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=128, max_seq_len=32, moe=moe))


def test_moe_layers_are_placed_every_kth_layer():
    assert [is_moe_layer(MoEConfig(n_experts=4, every=2), i) for i in range(4)] == [False, True, False, True]
    assert not any(is_moe_layer(MoEConfig(), i) for i in range(4))  # n_experts = 0: dense
    model = small_moe_model()
    assert [type(layer.feed_forward).__name__ for layer in model.layers] == ["FeedForward", "MoE"]


def test_parameter_and_flop_counts_use_active_experts():
    model = small_moe_model(shared_experts=1)
    attention, dense_mlp, norms = 4 * 32 * 32, 3 * 32 * 128, 2 * 32
    router, experts, shared = 4 * 32, 4 * 3 * 32 * 16, 3 * 32 * 16
    embedding = 64 * 32  # tied with the lm head
    total = embedding + (attention + dense_mlp + norms) + (attention + router + experts + shared + norms) + 32
    assert model.num_params() == total
    assert model.num_params(active=True) == total - experts // 2  # 2 of 4 experts per token
    matmul = embedding + 2 * attention + dense_mlp + router + experts // 2 + shared
    assert model.flops_per_token(16) == 6 * matmul + 12 * 2 * 4 * 8 * 16


def test_kv_cache_decoding_matches_the_full_forward_with_moe():
    model = small_moe_model(every=1).eval()
    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2)
        steps = [model(tokens[:, :5], cache)] + [model(tokens[:, i:i + 1], cache) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
