"""Tests for ltstg.models.stg."""
import pytest
import torch

from ltstg.models.stg import SemanticTransformationGenerator


def _make(var_activation: str = "softplus", **kwargs) -> SemanticTransformationGenerator:
    """Build inside fork_rng, as the stage does, so tests don't disturb the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return SemanticTransformationGenerator(6, 3, hidden=16, var_activation=var_activation, **kwargs)


def _inputs(batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    features = torch.randn(batch, 6, generator=g)  # (B, D)
    token_index = torch.randint(0, 3, (batch,), generator=g)  # (B,)
    return features, token_index


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_shapes_and_token_init(depth):
    stg = _make(depth=depth, token_std=0.5)
    mu, var = stg(*_inputs())
    assert mu.shape == (8, 6) and var.shape == (8, 6)
    assert stg.tokens.shape == (3, 6)
    assert 0.1 < stg.tokens.std().item() < 1.5  # drawn with token_std, not left at zero
    linears = [m for m in stg.mu_head if isinstance(m, torch.nn.Linear)]
    assert len(linears) == depth
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in stg.var_head) == depth - 1


@pytest.mark.parametrize("var_activation", ["softplus", "exp"])
def test_var_strictly_positive_even_for_large_negative_inputs(var_activation):
    stg = _make(var_activation)
    with torch.no_grad():
        stg.var_head[-1].weight.zero_()
        stg.var_head[-1].bias.fill_(-1e4)  # pre-activation −1e4: softplus and exp both underflow to 0
    features, token_index = _inputs()
    for mode in (stg.train, stg.eval):
        mode()
        _, var = stg(features * -1e4, token_index)
        assert (var > 0).all() and torch.isfinite(var).all()


def test_unknown_var_activation_is_rejected():
    with pytest.raises(ValueError, match="softplus"):
        SemanticTransformationGenerator(6, 3, var_activation="relu")


def test_token_is_added_to_the_input():
    stg = _make().eval()
    features, token_index = _inputs()
    mu, var = stg(features, token_index)
    shifted = features + stg.tokens[token_index].detach()
    with torch.no_grad():
        stg.tokens.zero_()
    mu_zero_tokens, var_zero_tokens = stg(shifted, token_index)
    assert torch.allclose(mu, mu_zero_tokens, atol=1e-6) and torch.allclose(var, var_zero_tokens, atol=1e-6)


def test_changing_a_token_changes_only_its_rows():
    stg = _make().eval()
    features = _inputs()[0]
    token_index = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mu, var = stg(features, token_index)
    with torch.no_grad():
        stg.tokens[1] += 1.0
    mu_after, var_after = stg(features, token_index)
    changed = token_index == 1
    assert not torch.allclose(mu_after[changed], mu[changed])
    assert not torch.allclose(var_after[changed], var[changed])
    assert torch.equal(mu_after[~changed], mu[~changed]) and torch.equal(var_after[~changed], var[~changed])


def test_batch_norm_train_and_eval_modes():
    stg = _make()
    features, token_index = _inputs()
    bn = stg.mu_head[1]
    stg.train()
    stg(features, token_index)
    assert bn.num_batches_tracked.item() == 1
    running = bn.running_mean.clone()
    stg.eval()
    single_mu, _ = stg(features[:1], token_index[:1])  # one sample works in eval mode
    batch_mu, _ = stg(features, token_index)
    assert torch.allclose(single_mu, batch_mu[:1], atol=1e-6)  # eval output doesn't depend on the batch
    assert torch.equal(bn.running_mean, running) and bn.num_batches_tracked.item() == 1


def test_a_few_adam_steps_reduce_the_loss():
    stg = _make()
    g = torch.Generator().manual_seed(2)
    features = torch.randn(64, 6, generator=g)  # (B, D)
    token_index = torch.randint(0, 3, (64,), generator=g)  # (B,)
    target_mu = 0.5 * features  # (B, D)
    target_var = torch.full((64, 6), 0.3)  # (B, D)
    optimizer = torch.optim.Adam(stg.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        mu, var = stg(features, token_index)
        loss = (mu - target_mu).square().mean() + (var - target_var).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert stg.tokens.grad is not None and stg.tokens.grad.abs().sum() > 0
