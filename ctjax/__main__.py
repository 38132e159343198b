"""`python -m ctjax`: solve the exact probability flow of the 2-D mixture and report its accuracy."""

import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import jax.random as jr

import ctjax


def main(num: int = 2000) -> None:
    target = ctjax.presets.gmm2d()
    schedule = ctjax.VarianceExploding(0.002, 80.0)
    k_noise, k_start, k_data, k_ref = jr.split(jr.key(0), 4)
    # Exact marginal at t_max: data plus noise of standard deviation 80.
    noise = target.sample(k_start, num) + schedule.t_max * jr.normal(k_noise, (num, 2))
    solve = jax.jit(jax.vmap(lambda x: ctjax.flow_map(target, schedule, x, schedule.t_max, schedule.t_min)))
    start = time.perf_counter()
    samples = solve(noise).block_until_ready()
    seconds = time.perf_counter() - start
    data = target.sample(k_data, num) + schedule.t_min * jr.normal(k_ref, (num, 2))
    floor = ctjax.metrics.wasserstein1(target.sample(jr.key(1), num), target.sample(jr.key(2), num))
    w1 = ctjax.metrics.wasserstein1(samples, data)
    check = ctjax.Gaussian(jnp.array([1.0, -0.5]), jnp.array([[2.0, 0.3], [0.3, 0.5]]))
    closed = jax.vmap(lambda x: ctjax.gaussian_flow_map(check, schedule, x, 80.0, 0.002))(noise[:100])
    solved = jax.vmap(lambda x: ctjax.flow_map(check, schedule, x, 80.0, 0.002))(noise[:100])
    print(
        f"exact probability flow of gmm2d: {num} samples from sigma=80 to sigma=0.002 in {seconds:.2f}s (with compile)"
    )
    print(f"  W1(flow samples, data)       = {w1:.4f}")
    print(f"  W1(data, data') (MC floor)   = {floor:.4f}")
    print(f"  max |flow_map - closed form| = {float(jnp.max(jnp.abs(solved - closed))):.2e}  (Gaussian check)")


if __name__ == "__main__":
    main()
