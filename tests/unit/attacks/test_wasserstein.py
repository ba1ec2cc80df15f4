"""Projected Sinkhorn and WMA, checked against exact optimal transport (POT) and hand values."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import scipy.special
import torch
from torch import nn

from advreid.attacks import wasserstein
from advreid.attacks.gradient import attack
from advreid.attacks.objectives import reid_non_targeted
from advreid.attacks.wasserstein import (
    exact_wasserstein_distance,
    local_transport_cost,
    projected_sinkhorn,
    wasserstein_metric_attack,
    wma,
    wright_omega,
)


def exact_wasserstein(clean: torch.Tensor, other: torch.Tensor) -> float:
    """1-Wasserstein distance by exact LP (POT) with the full Euclidean pixel-position cost, mass moving
    within each channel, both images divided by the clean image's total mass (the projection's units)."""
    channels, height, width = clean.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    positions = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)
    cost = ot.dist(positions, positions, metric="euclidean")
    total_mass = clean.sum().item()
    distance = 0.0
    for c in range(channels):
        a = clean[c].double().numpy().ravel()
        b = other[c].double().numpy().ravel()
        if a.sum() == 0:
            continue
        # Equal-mass marginals for the LP; the projection conserves channel mass up to its tolerance.
        distance += a.sum() / total_mass * ot.emd2(a / a.sum(), b / b.sum(), cost)
    return float(distance)


def _block_image(channels: int = 1, height: int = 8, width: int = 8) -> torch.Tensor:
    """Structured content inside a zero border, so a one-pixel shift keeps all the mass in the image."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, channels, height, width, dtype=torch.float64)
    x[:, :, 2 : height - 2, 2 : width - 2] = torch.rand(channels, height - 4, width - 4, generator=g)
    return x


def _random_images(shape, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    return torch.where(x < 0.25, torch.zeros_like(x), x)  # a quarter of the pixels are exactly zero


def test_wright_omega_matches_scipy_lambert_w():
    moderate = torch.linspace(-60.0, 40.0, 2001, dtype=torch.float64)
    large = torch.logspace(1.7, 4, 50, dtype=torch.float64)  # exp(s) overflows: compare with scipy's omega
    s = torch.cat([moderate, large])
    reference = torch.cat(
        [
            torch.from_numpy(np.real(scipy.special.lambertw(np.exp(moderate.numpy())))),
            torch.from_numpy(np.real(scipy.special.wrightomega(large.numpy()))),
        ]
    )
    torch.testing.assert_close(wright_omega(s), reference, rtol=1e-12, atol=0)
    # Defining identity omega + log(omega) = s, and the limit at -inf.
    omega = wright_omega(s)
    torch.testing.assert_close(omega + torch.log(omega), s, rtol=1e-12, atol=1e-12)
    assert wright_omega(torch.tensor([-float("inf")])).item() == 0.0


def test_local_cost_is_the_euclidean_pixel_distance():
    r2 = 2**0.5
    expected = torch.tensor([[r2, 1.0, r2], [1.0, 0.0, 1.0], [r2, 1.0, r2]])
    torch.testing.assert_close(local_transport_cost(3), expected)
    with pytest.raises(ValueError, match="kernel_size"):
        local_transport_cost(4)


@pytest.mark.parametrize("unfold_below", [0, 1 << 30], ids=["convolution", "unfold"])
def test_local_transport_matches_a_dense_matrix_on_a_non_square_image(monkeypatch, unfold_below):
    monkeypatch.setattr(wasserstein, "_UNFOLD_BELOW", unfold_below)
    g = torch.Generator().manual_seed(0)
    mass = torch.rand(2, 3, 6, 4, generator=g, dtype=torch.float64)
    psi = torch.tensor([0.5, 2.0], dtype=torch.float64)
    k = 3
    cost = local_transport_cost(k, dtype=torch.float64)
    kernel = torch.exp(-psi.view(-1, 1, 1, 1) * cost - 1.0)
    out = wasserstein._apply_kernels(torch.cat([kernel, kernel * cost], dim=1), mass)  # (B, C, 2, H, W)
    # Dense n x n kernel: K_ij = exp(-psi |p_i - p_j| - 1) if the pixels are within the k x k window, else 0.
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(4), indexing="ij")
    pos = torch.stack([rows.ravel(), cols.ravel()], 1).double()
    inside = ((pos[:, None] - pos[None]).abs() <= k // 2).all(-1)
    distance = torch.cdist(pos, pos)
    for b in range(2):
        dense = torch.where(inside, torch.exp(-psi[b] * distance - 1.0), torch.zeros(()).double())
        for index, matrix in enumerate([dense, dense * distance]):
            expected = (mass[b].reshape(3, -1) @ matrix.T).view(3, 6, 4)
            torch.testing.assert_close(out[b, :, index], expected)


def test_one_pixel_shift_is_small_in_wasserstein_and_maximal_in_linf():
    # Thesis Fig. 4.1: translating an image by one pixel moves every unit of mass by exactly one pixel.
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 1] = 1.0
    shifted = torch.roll(x, 1, dims=3)
    assert exact_wasserstein(x[0], shifted[0]) == pytest.approx(1.0)
    assert (shifted - x).abs().max().item() == 1.0
    # A uniform grey at L-inf distance 1/4 must carry mass across the image: a larger Wasserstein distance.
    grey = torch.full_like(x, 1.0 / 16)
    assert exact_wasserstein(x[0], grey[0]) > 1.5 * exact_wasserstein(x[0], shifted[0])
    assert (grey - x).abs().max().item() < 1.0


def test_point_inside_the_ball_projects_to_nearly_itself():
    x = _block_image()
    shifted = torch.roll(x, 1, dims=3)  # W = 1 from x, L-inf = large
    result = projected_sinkhorn(x, shifted, 1.2, lam=3000.0, max_iter=2000)
    assert result.converged.all()
    assert (result.images - shifted).abs().max() < 0.05 * (shifted - x).abs().max()
    assert exact_wasserstein(shifted[0], result.images[0]) < 0.1


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 8, 4)], ids=["square", "2:1"])
def test_projection_lies_in_the_ball_and_conserves_channel_mass(shape):
    x = _random_images(shape, seed=1)
    x_adv = (x + 0.5 * torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)).clamp(0, 1)
    eps_w = 0.2
    result = projected_sinkhorn(x, x_adv, eps_w, lam=300.0, max_iter=5000, tol=1e-10)
    assert result.converged.all()
    assert torch.isfinite(result.images).all() and (result.images >= 0).all()
    for b in range(shape[0]):
        before = exact_wasserstein(x[b], x_adv[b] * x[b].sum() / x_adv[b].sum())
        assert before > 1.5 * eps_w, "the test point must start outside the ball"
        assert exact_wasserstein(x[b], result.images[b]) <= eps_w * 1.02
        # ... and it is a projection: closer to the point than the centre of the ball is.
        assert (result.images[b] - x_adv[b]).norm() < 0.9 * (x[b] - x_adv[b]).norm()
    # Converged: the ball constraint is active and each channel keeps its clean mass.
    torch.testing.assert_close(result.transport_cost, torch.full((shape[0],), eps_w, dtype=x.dtype), rtol=1e-4, atol=0)
    torch.testing.assert_close(result.images.sum(dim=(2, 3)), x.sum(dim=(2, 3)), rtol=1e-4, atol=1e-9)


def test_raw_intensity_units_bound_the_raw_wasserstein_distance():
    x = _random_images((2, 3, 8, 4), seed=10)
    x_adv = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(11), dtype=x.dtype)).clamp(0, 1)
    eps_raw = 2.0  # two units of [0, 1] intensity moved by one pixel
    result = projected_sinkhorn(x, x_adv, eps_raw, lam=10.0, max_iter=5000, tol=1e-10, unit_mass=False)
    assert result.converged.all()
    for b in range(2):
        mass = x[b].sum().item()
        assert exact_wasserstein(x[b], x_adv[b] * mass / x_adv[b].sum()) * mass > 2 * eps_raw
        assert exact_wasserstein(x[b], result.images[b]) * mass <= eps_raw * 1.02
    torch.testing.assert_close(result.transport_cost, torch.full((2,), eps_raw, dtype=x.dtype), rtol=1e-4, atol=0)
    torch.testing.assert_close(result.images.sum(dim=(2, 3)), x.sum(dim=(2, 3)), rtol=1e-4, atol=1e-9)


def _primal_projection(x, w, psi, lam, k):
    """Independent solve of the primal (eq. 4.6, scaled by lam) for a fixed multiplier psi:
    min over plans T >= 0 with rows summing to x, local support, of
        lam/2 |w - T^T 1|^2 + sum T log T + psi <T, C>,
    by L-BFGS on per-row softmax logits (a dense n x n plan: tiny images only)."""
    _, height, width = x.shape
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pos = torch.stack([rows.ravel(), cols.ravel()], 1).double()
    support = ((pos[:, None] - pos[None]).abs() <= k // 2).all(-1)
    cost = torch.cdist(pos, pos)
    source, target = x.reshape(-1), w.reshape(-1)
    logits = torch.zeros(len(source), len(source), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [logits], max_iter=100, tolerance_grad=1e-10, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def log_rows():
        # A finite fill: exp underflows to exactly 0 off the support while gradients stay finite.
        return torch.log_softmax(logits.masked_fill(~support, -1e4), dim=1)

    def plan():
        return source[:, None] * log_rows().exp()

    def closure():
        optimizer.zero_grad()
        t = plan()
        entropy = (t * (torch.log(source)[:, None] + log_rows())).sum()
        loss = lam / 2 * ((target - t.sum(0)) ** 2).sum() + entropy + psi * (t * cost).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    t = plan().detach()
    return t.sum(0).view_as(x), (t * cost).sum().item()


def test_projection_solves_the_primal_problem_of_eq_4_6():
    x = 0.1 + torch.rand((1, 1, 4, 5), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    w = (x + 0.4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)).clamp(0, 1)
    lam, eps_w = 50.0, 0.15
    result = projected_sinkhorn(x, w, eps_w, lam=lam, kernel_size=3, max_iter=5000, tol=1e-12)
    assert result.converged.all() and result.multiplier.item() > 0, "the constraint must be active"
    mass = x.sum()
    z, cost = _primal_projection(x[0] / mass, w[0] / mass, result.multiplier.item(), lam, 3)
    torch.testing.assert_close(result.images[0] / mass, z, rtol=0, atol=1e-5)
    assert cost == pytest.approx(eps_w, rel=1e-3)  # complementary slackness at the returned multiplier


def test_zero_pixels_channels_and_images_give_no_nan():
    x = _random_images((3, 3, 8, 4), seed=3)
    x[0, 1] = 0.0  # an empty channel
    x[1, :, :5] = 0.0  # an empty band wider than the window reach: nothing can arrive at its top rows
    x[2] = 0.0  # an empty image
    x_adv = torch.rand(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    for dtype in (torch.float64, torch.float32):
        result = projected_sinkhorn(x.to(dtype), x_adv.to(dtype), 0.1, max_iter=300)
        assert torch.isfinite(result.images).all()
        assert torch.isfinite(result.transport_cost).all() and torch.isfinite(result.multiplier).all()
        assert (result.images[0, 1] == 0).all() and (result.images[2] == 0).all()
        assert (result.images[1, :, :2] == 0).all()  # 3 rows from any mass with a 7 x 7 window


def test_each_image_stops_on_its_own_and_matches_its_single_projection():
    x = torch.cat([_random_images((1, 1, 8, 8), seed=5), _block_image()])
    x_adv = torch.cat([x[:1].clone(), torch.roll(x[1:], 1, dims=3)])
    batch = projected_sinkhorn(x, x_adv, 0.3, lam=300.0, max_iter=1000)
    assert batch.converged.all()
    assert batch.iterations[0] != batch.iterations[1]
    for b in range(2):
        single = projected_sinkhorn(x[b : b + 1], x_adv[b : b + 1], 0.3, lam=300.0, max_iter=1000)
        assert single.iterations.item() == batch.iterations[b].item()
        torch.testing.assert_close(single.images[0], batch.images[b], rtol=1e-9, atol=1e-12)
    capped = projected_sinkhorn(x, x_adv, 0.3, lam=300.0, max_iter=3)
    assert capped.iterations.tolist() == [3, 3] and not capped.converged.any()


def test_projection_rejects_bad_input():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="one shape"):
        projected_sinkhorn(x, torch.rand(1, 1, 4, 5), 0.1)
    with pytest.raises(ValueError, match="non-negative"):
        projected_sinkhorn(x - 1, x, 0.1)
    with pytest.raises(ValueError, match="kernel_size"):
        projected_sinkhorn(x, x, 0.1, kernel_size=6)
    with pytest.raises(ValueError, match="eps_w"):
        projected_sinkhorn(x, x, -0.1)


def _feature_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 4, 5)).double()


def test_wma_is_algorithm_1():
    model = _feature_model()
    x = 0.1 + 0.8 * torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    gallery = model(x).detach() + 0.2
    objective = reid_non_targeted(gallery)
    eps, eps_w, step, lam = 6 / 255, 0.02, 2 / 255, 500.0
    adv = wma(model, x, objective, eps_w=eps_w, eps=eps, step=step, steps=2, lam=lam)
    # Algorithm 1 by hand in Wong et al.'s order: sign step, clip Gamma, Wasserstein projection around the
    # clean image (warm-started from the previous one), then [0, 1].
    current, state = x, None
    for _ in range(2):
        point = current.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(model(point)).sum(), point)
        stepped = torch.minimum(torch.maximum(current + step * grad.sign(), x - eps), x + eps)
        projected = projected_sinkhorn(x, stepped, eps_w, lam=lam, initial=state)
        state = (projected.multiplier, projected.scaling)
        current = projected.images.clamp(0, 1)
    torch.testing.assert_close(adv, current, rtol=0, atol=1e-12)
    assert (objective(model(adv)) > objective(model(x))).all()


def test_wma_without_gamma_is_the_projection_callable_of_the_common_loop():
    # Without the clip Gamma, WMA is the common loop's step, projection and [0, 1]: the same fixed points, so
    # equal up to the projections' tolerance (WMA warm-starts them, the callable starts cold).
    model = _feature_model()
    x = torch.rand(1, 3, 8, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    objective = reid_non_targeted(model(x).detach() + 0.1)

    def projection(clean, point):
        return projected_sinkhorn(clean, point, 0.05, lam=300.0, tol=1e-10, max_iter=5000).images

    expected = attack(model, x, objective, eps=1.0, step=0.02, steps=2, projection=projection)
    result = wasserstein_metric_attack(
        model, x, objective, eps_w=0.05, eps=None, step=0.02, steps=2, lam=300.0, tol=1e-10, max_iter=5000
    )
    assert result.unconverged.sum() == 0
    torch.testing.assert_close(result.images, expected, rtol=0, atol=1e-7)


def _dense_kernel(height, width, k, psi):
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pos = torch.stack([rows.ravel(), cols.ravel()], 1).double()
    inside = ((pos[:, None] - pos[None]).abs() <= k // 2).all(-1)
    return torch.where(inside, torch.exp(-psi * torch.cdist(pos, pos) - 1.0), torch.zeros(()).double())


def test_mass_error_is_the_row_marginal_violation_of_the_first_plan():
    # One iteration from psi = 1, v = 1 by hand with a dense plan and scipy's Lambert W.
    x = 0.1 + torch.rand((1, 1, 3, 4), generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    w = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(13), dtype=x.dtype)).clamp(0, 1)
    lam = 20.0
    result = projected_sinkhorn(x, w, 0.1, lam=lam, kernel_size=3, max_iter=1)
    p = (x / x.sum()).reshape(-1)
    q = (w / x.sum()).reshape(-1)
    kernel = _dense_kernel(3, 4, 3, 1.0)
    u = p / (kernel @ torch.ones_like(p))
    a = kernel.T @ u
    z = torch.from_numpy(np.real(scipy.special.lambertw((lam * a * torch.exp(lam * q)).numpy()))) / lam
    v = z / a
    expected = (u * (kernel @ v) - p).abs().sum()
    assert result.mass_error.item() == pytest.approx(expected.item(), rel=1e-9)
    torch.testing.assert_close(result.images.reshape(-1) / x.sum(), z)
    assert expected > 1e-3 and not result.converged.any()


@pytest.mark.parametrize("tol", [1e-5, 1e-8])
def test_converged_means_primal_residuals_below_tol(tol):
    x = _random_images((2, 3, 8, 4), seed=14)
    x_adv = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(15), dtype=x.dtype)).clamp(0, 1)
    eps_raw = 2.0
    result = projected_sinkhorn(x, x_adv, eps_raw, lam=10.0, max_iter=5000, tol=tol, unit_mass=False)
    assert result.converged.all() and (result.mass_error <= tol).all()
    # The columns of the plan are the image, so its mass differs from the clean mass by at most the mass error.
    mass = x.sum(dim=(1, 2, 3))
    assert ((result.images.sum(dim=(1, 2, 3)) - mass).abs() / mass <= tol).all()
    assert ((result.transport_cost - eps_raw).abs() <= tol * eps_raw).all()  # the ball constraint is active
    # The old dual-objective rule (tol 1e-6) stopped far earlier, at a mass error of order 1e-3.
    early = projected_sinkhorn(x, x_adv, eps_raw, lam=10.0, max_iter=int(result.iterations.min()) // 10, tol=tol)
    assert not early.converged.any()


def test_warm_start_reaches_the_same_fixed_point_in_fewer_iterations():
    x = _random_images((2, 3, 8, 4), seed=16)
    g = torch.Generator().manual_seed(17)
    first = (x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)
    second = (first + 0.02 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)
    options = {"lam": 10.0, "max_iter": 5000, "tol": 1e-9, "unit_mass": False}
    previous = projected_sinkhorn(x, first, 1.5, **options)
    cold = projected_sinkhorn(x, second, 1.5, **options)
    warm = projected_sinkhorn(x, second, 1.5, initial=(previous.multiplier, previous.scaling), **options)
    assert cold.converged.all() and warm.converged.all()
    assert (warm.iterations < cold.iterations).all()
    torch.testing.assert_close(warm.images, cold.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(warm.multiplier, cold.multiplier, rtol=1e-4, atol=0)


class _CountingObjective:
    """Distance of the features from fixed references; records the batches it saw."""

    def __init__(self, references):
        self.references = references

    def __call__(self, features):
        return (features - self.references).norm(dim=1)


def test_radius_grows_by_the_factor_every_period_for_unfooled_queries_only():
    model = _feature_model()
    x = 0.1 + 0.5 * torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    objective = _CountingObjective(model(x).detach() + 0.1)
    calls = []

    def fooled(output):  # query 0 counts as fooled from the 12th check on; query 1 never
        calls.append(len(calls))
        return torch.tensor([len(calls) > 11, False])

    result = wasserstein_metric_attack(
        model,
        x,
        objective,
        eps_w=1.0,
        eps=None,
        step=1 / 255,
        steps=25,
        lam=10.0,
        max_iter=50,
        unit_mass=False,
        growth=1.1,
        grow_every=10,
        fooled=fooled,
    )
    # Query 1 stepped 25 times, its radius grown before steps 10 and 20; query 0 stopped after 11 steps,
    # grown once.
    assert result.steps.tolist() == [11, 25]
    torch.testing.assert_close(result.eps_w, torch.tensor([1.1, 1.1**2], dtype=torch.float64))
    assert result.fooled.tolist() == [True, False]


def test_only_unfooled_queries_move():
    model = _feature_model()
    x = 0.1 + 0.5 * torch.rand(3, 3, 8, 4, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    objective = _CountingObjective(model(x).detach() + 0.1)
    result = wasserstein_metric_attack(
        model,
        x,
        objective,
        eps_w=0.5,
        eps=4 / 255,
        step=1 / 255,
        steps=3,
        lam=10.0,
        unit_mass=False,
        fooled=lambda output: torch.tensor([True, False, True]),
    )
    assert torch.equal(result.images[0], x[0]) and torch.equal(result.images[2], x[2])
    assert (result.images[1] - x[1]).abs().max() > 0
    assert result.steps.tolist() == [0, 3, 0] and result.iterations[0] == 0


def test_output_is_inside_the_final_wasserstein_ball():
    model = _feature_model()
    x = 0.1 + 0.5 * torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    objective = _CountingObjective(model(x).detach() + 0.1)
    result = wasserstein_metric_attack(
        model,
        x,
        objective,
        eps_w=0.5,
        eps=8 / 255,
        step=4 / 255,
        steps=12,
        lam=10.0,
        max_iter=2000,
        tol=1e-7,
        unit_mass=False,
        growth=1.1,
        grow_every=5,
    )
    assert result.unconverged.sum() == 0 and (result.mass_error <= 1e-7).all()
    torch.testing.assert_close(result.eps_w, torch.full((2,), 0.5 * 1.1**2, dtype=torch.float64))
    for b in range(2):
        distance = exact_wasserstein(x[b], result.images[b]) * x[b].sum().item()  # raw units
        assert distance <= result.eps_w[b].item() * (1 + 1e-4)
        assert distance > 0.05 * result.eps_w[b].item()  # the image moved (the entropic plan moves more mass)
    # the ball constraint is active: the last plan's cost is the radius
    torch.testing.assert_close(result.transport_cost, result.eps_w, rtol=1e-6, atol=0)
    # The stage's helper: the same exact distance, and on 2x2 block images pooled by 2 it is exact too.
    torch.testing.assert_close(
        exact_wasserstein_distance(x, result.images),
        torch.tensor([exact_wasserstein(x[b], result.images[b]) * x[b].sum().item() for b in range(2)]).double(),
        rtol=1e-6,
        atol=0,
    )
    blocks = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    blocks[..., 2:4, 2:4] = 1.0
    shifted = torch.roll(blocks, 2, dims=3)  # 4 units of mass moved by 2 pixels
    assert exact_wasserstein_distance(blocks, shifted, pool=2).item() == pytest.approx(8.0)
    assert exact_wasserstein_distance(blocks, shifted).item() == pytest.approx(8.0)
