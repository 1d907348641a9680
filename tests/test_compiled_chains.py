"""compile=True chains: equal to the uncompiled chain (same noise stream), no recompilation
across runs, offsets, schedules or optimizer steps, and a warned fallback for energies that
cannot be compiled. Most tests compile with the aot_eager backend (dynamo + AOT autograd, no
C++ code generation) to keep CI fast; one test runs inductor end to end."""
import copy
import warnings

import pytest
import torch
from torch import nn

import langevin_kernels as lk
from langevin_kernels.chains.core import DYNAMO_TRACES_REQUIRES_GRAD
from langevin_kernels.targets import IllConditionedGaussian


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given (one per compilation)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def double_well(x):
    return 2 * ((x * x - 1) ** 2).flatten(1).sum(1)


def mlp(dim=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(dim, 16), nn.SiLU(), nn.Linear(16, 1))


@pytest.mark.parametrize("mala", [False, True])
@pytest.mark.parametrize("options", [dict(clamp=(-1.5, 1.5)), dict(grad_clip=3.0), dict(step_size=lk.Linear(0.02, 0.005))])
def test_compiled_equals_uncompiled(mala, options, one_thread):
    common = dict(n_steps=12, step_size=0.01, noise_scale=0.02 ** 0.5, mala=mala, seed=7, offset=5)
    common.update(options)
    x0 = torch.randn(16, 3)
    plain = lk.DataChain(double_well, **common)
    compiled = lk.DataChain(double_well, compile={"backend": "aot_eager"}, compile_block=5, **common)
    for _ in range(2):   # two runs: offsets advance alike
        want, got = plain.run(x0), compiled.run(x0)
        # Same noise and formula; inductor/aot may reorder float32 arithmetic (a few ulps per step).
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert compiled.offset == plain.offset
    assert compiled.compile_failed is None
    a, b = plain.stats.to_dict(), compiled.stats.to_dict()
    torch.testing.assert_close(torch.tensor(b["energy_mean"]), torch.tensor(a["energy_mean"]), rtol=1e-4, atol=1e-4)
    if mala:   # the accept decisions themselves must match, not only the states
        assert b["acceptance"] == a["acceptance"]


@pytest.mark.parametrize("options", [dict(clamp=(-1.5, 1.5)), dict(grad_clip=3.0),
                                     dict(step_size=lk.Linear(0.02, 0.005)),
                                     dict(track_stats=False, on_nonfinite="ignore")])
def test_scanned_run_equals_uncompiled(options, one_thread, monkeypatch):
    """The CPU default (no compile_block): each noise draw's ULA steps as one scan. A draw budget
    of one 10-step block per draw makes the 50-step run five scans: the same states, statistics
    and offsets as the uncompiled chain."""
    import langevin_kernels.compiled as compiled
    monkeypatch.setattr(compiled, "NOISE_DRAW_NUMBERS", 4 * 12 * 10)   # 16 x 3 states: 12 offsets per step
    common = dict(n_steps=50, step_size=0.01, noise_scale=0.02 ** 0.5, seed=7, offset=5)
    common.update(options)
    x0 = torch.randn(16, 3)
    plain = lk.DataChain(double_well, **common)
    scanned = lk.DataChain(double_well, compile={"backend": "aot_eager"}, **common)
    for _ in range(2):
        want, got = plain.run(x0), scanned.run(x0)
        assert scanned._runner.scan_failed is None and scanned.compile_failed is None
        assert [n for _, n in scanned._runner._plan(x0).draws] == [10] * 5
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert scanned.offset == plain.offset
        if plain.track_stats:
            torch.testing.assert_close(scanned.stats.table, plain.stats.table, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_what_runs_scanned_and_what_as_blocks(one_thread):
    """ULA on CPU states scans; compile_block asks for unrolled blocks; MALA and the kinetic chain
    run as blocks; an energy the scan cannot trace (BatchNorm in train mode writes its running
    statistics: torch.func refuses) falls back to blocks without a warning, equal to the uncompiled run."""
    steps = dict(n_steps=6, step_size=0.01, noise_scale=0.1, seed=3)
    x0 = torch.randn(16, 4)
    runner = lambda chain: chain.run(x0) is not None and chain._runner   # noqa: E731
    assert runner(lk.DataChain(double_well, compile={"backend": "aot_eager"}, **steps)).scan_failed is None
    assert "compile_block" in runner(lk.DataChain(double_well, compile={"backend": "aot_eager"}, compile_block=3,
                                                  **steps)).scan_failed
    assert "MALA" in runner(lk.DataChain(double_well, compile={"backend": "aot_eager"}, mala=True, **steps)).scan_failed
    kinetic = lk.KineticChain(double_well, n_steps=6, step_size=0.05, friction=1.0, compile={"backend": "aot_eager"})
    assert runner(kinetic).scan_failed is not None
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.SiLU(), nn.Linear(8, 1))
    plain_net = copy.deepcopy(net)
    chain = lk.DataChain(lambda x: net(x).squeeze(1), compile={"backend": "aot_eager"}, **steps)
    if not DYNAMO_TRACES_REQUIRES_GRAD:   # before torch 2.12 blocks take torch.func too: the warned fallback
        with pytest.warns(RuntimeWarning, match="could not be compiled"):
            got = chain.run(x0)
        assert chain.compile_failed
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            got = chain.run(x0)
        assert chain.compile_failed is None
    assert chain._runner.scan_failed is not None
    torch.testing.assert_close(got, lk.DataChain(lambda x: plain_net(x).squeeze(1), **steps).run(x0),
                               rtol=1e-5, atol=1e-5)


def test_a_scan_that_cannot_compile_is_not_retried_by_fresh_chains(one_thread, caplog):
    """A trainer builds fresh evaluation chains of one energy and configuration: once the scan
    failed to compile for them (here BatchNorm in train mode, which torch.func refuses), later
    chains go straight to blocks instead of tracing the scan again (each attempt logs one line)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.SiLU(), nn.Linear(8, 1))
    energy = lambda x: net(x).squeeze(1)   # noqa: E731
    with warnings.catch_warnings(), caplog.at_level("INFO", logger="langevin_kernels"):
        warnings.simplefilter("ignore", RuntimeWarning)   # before torch 2.12 the blocks fail too (warned)
        for seed in (1, 2, 3):
            chain = lk.DataChain(energy, n_steps=4, step_size=0.01, noise_scale=0.1, seed=seed,
                                 compile={"backend": "aot_eager"})
            chain.run(torch.randn(16, 4))
            assert chain._runner.scan_failed is not None
    attempts = [r for r in caplog.records if "scanned run could not be compiled" in r.getMessage()]
    assert len(attempts) == 1


@pytest.mark.parametrize("compile_block", [None, 4], ids=["scan", "blocks"])
def test_no_recompilation_across_runs_and_optimizer_steps(compile_block, one_thread):
    torch._dynamo.reset()   # start from empty caches, so the count below is this chain's alone
    counter = CountingBackend()
    net = mlp()
    chain = lk.DataChain(lambda x: net(x).squeeze(1), n_steps=8, step_size=0.01, noise_scale=0.1,
                         compile={"backend": counter}, compile_block=compile_block)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x0 = torch.randn(32, 4)
    for _ in range(3):
        x = chain.run(x0)
        loss = net(x).mean() - net(x0).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()                       # new parameter values, same tensors
    assert counter.graphs == 1          # one scan of 8 steps, or 2 blocks of 4: one graph, reused
    chain.run(torch.randn(8, 4))        # a new batch shape compiles once more
    assert counter.graphs == 2
    assert chain.compile_seconds > 0


def _scaled_double_well(k):
    return lambda x: (1 + k) * double_well(x)


def test_more_chains_than_the_recompile_limit_all_compile(one_thread):
    """Dynamo keeps its graphs, and a limit of 8, per code object: chains sharing one would run
    the blocks of the 9th variant in a process uncompiled, said only in torch's log."""
    counter = CountingBackend()
    n = torch._dynamo.config.recompile_limit + 2
    chains = [lk.DataChain(_scaled_double_well(k), n_steps=3, step_size=0.01, noise_scale=0.1,
                           compile={"backend": counter}) for k in range(n)]   # n energies: n graphs
    x0 = torch.randn(4, 2)
    for chain in chains:
        chain.run(x0)
        assert chain.compile_seconds > 0 and chain.compile_failed is None
    assert counter.graphs == n
    for chain in chains:                   # and each keeps its graph: no retrace on a warm run
        chain.run(x0)
    assert counter.graphs == n


def test_chains_of_one_energy_and_configuration_share_graphs(one_thread):
    """A trainer builds a fresh evaluation chain (new seed) every evaluation: it must not recompile."""
    counter = CountingBackend()
    energy = _scaled_double_well(0.5)
    options = dict(n_steps=4, step_size=0.01, noise_scale=0.1, compile={"backend": counter}, on_nonfinite="ignore")
    x0 = torch.randn(6, 2)
    lk.DataChain(energy, seed=1, **options).run(x0)
    assert counter.graphs == 1
    lk.DataChain(energy, seed=2, **options).run(x0)
    assert counter.graphs == 1
    lk.DataChain(energy, seed=3, **dict(options, clamp=(-1.0, 1.0))).run(x0)   # another configuration
    assert counter.graphs == 2
    target = IllConditionedGaussian(dim=2)   # a bound method is a new object at every access
    lk.DataChain(target.energy, seed=4, **options).run(x0)
    lk.DataChain(target.energy, seed=5, **options).run(x0)
    assert counter.graphs == 3


def test_a_chain_past_the_recompile_limit_warns_and_runs_uncompiled(one_thread):
    limit = torch._dynamo.config.recompile_limit
    options = dict(n_steps=3, step_size=0.01, noise_scale=0.1, seed=4)
    compiled = lk.DataChain(_scaled_double_well(2), compile={"backend": CountingBackend()}, compile_block=3, **options)
    plain = lk.DataChain(_scaled_double_well(2), **options)
    for batch in range(1, limit + 1):        # limit static shapes: limit graphs
        compiled.run(torch.ones(batch, 2))
    assert compiled.compile_failed is None
    x0 = torch.randn(limit + 1, 2)
    plain.offset = compiled.offset
    with pytest.warns(RuntimeWarning, match="could not be compiled"):
        got = compiled.run(x0)
    assert compiled.compile_failed is not None
    torch.testing.assert_close(got, plain.run(x0), rtol=1e-5, atol=1e-5)


def test_compiled_latent_chain_equals_uncompiled(one_thread):
    gen = nn.Linear(3, 5)
    z0, x = torch.randn(10, 3), torch.randn(10, 5)
    common = dict(sigma=0.5, n_steps=6, step_size=0.01, noise_scale=0.1, seed=2)
    want = lk.LatentChain(gen, **common).run(z0, x)
    got = lk.LatentChain(gen, compile={"backend": "aot_eager"}, **common).run(z0, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_uncompilable_energy_warns_and_falls_back(one_thread):
    def energy(x):
        if float(x.sum()) > 1e9:          # data-dependent Python control flow: a graph break
            return x.sum(1)
        return double_well(x)
    common = dict(n_steps=4, step_size=0.01, noise_scale=0.1, seed=1)
    x0 = torch.randn(8, 2)
    chain = lk.DataChain(energy, compile={"backend": "aot_eager"}, **common)
    with pytest.warns(RuntimeWarning, match="could not be compiled.*running uncompiled"):
        got = chain.run(x0)
    assert chain.compile_failed
    torch.testing.assert_close(got, lk.DataChain(energy, **common).run(x0))


def _func_gradient_chains():
    """(name, make chain(**options), run(chain)) for each chain kind with a compiled runner."""
    gen = nn.Linear(3, 5)
    z0, x = torch.randn(10, 3), torch.randn(10, 5)
    x0 = torch.randn(16, 3)
    steps = dict(n_steps=6, step_size=0.01, noise_scale=0.1, seed=2)
    return [
        ("data", lambda **o: lk.DataChain(double_well, grad_clip=3.0, **steps, **o), lambda c: c.run(x0)),
        ("mala", lambda **o: lk.DataChain(double_well, mala=True, **steps, **o), lambda c: c.run(x0)),
        ("latent", lambda **o: lk.LatentChain(gen, sigma=0.5, **steps, **o), lambda c: c.run(z0, x)),
        ("kinetic", lambda **o: lk.KineticChain(double_well, n_steps=6, step_size=0.05, friction=1.0, seed=2, **o),
         lambda c: c.run(x0)),
    ]


@pytest.mark.parametrize("case", range(4), ids=["data", "mala", "latent", "kinetic"])
def test_func_gradient_blocks_equal_uncompiled(case, one_thread):
    # torch.func.grad is how compiled blocks differentiate on a torch whose dynamo cannot trace
    # requires_grad_ (2.11, the GPU machines' torch); this torch takes the autograd route, so
    # the func route is forced here to keep it tested.
    _, make, run = _func_gradient_chains()[case]
    want = run(make())
    chain = make(compile={"backend": "aot_eager"}, compile_block=3)   # blocks (a scan always takes func)
    chain._traced_gradient = "func"
    got = run(chain)
    assert chain.compile_failed is None and chain._traced_gradient == "func"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_untraceable_autograd_gradient_switches_to_func(one_thread, monkeypatch):
    from langevin_kernels.chains import core
    plain_gradient = core._gradient

    def gradient(*args):   # what torch 2.11's dynamo does with x.detach().requires_grad_()
        if torch.compiler.is_compiling():
            raise RuntimeError("simulated: dynamo cannot trace this gradient")
        return plain_gradient(*args)
    monkeypatch.setattr(core, "_gradient", gradient)
    common = dict(n_steps=8, step_size=0.01, noise_scale=0.1, seed=4)
    x0 = torch.randn(8, 2)
    chain = lk.DataChain(double_well, compile={"backend": "aot_eager"}, compile_block=4, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # the switch is silent: no fallback warning
        got = chain.run(x0)
    assert chain.compile_failed is None and chain._traced_gradient == "func"
    torch.testing.assert_close(got, lk.DataChain(double_well, **common).run(x0), rtol=1e-5, atol=1e-5)


def test_compile_refuses_differentiable_and_bad_values():
    with pytest.raises(ValueError, match="compile=True cannot be combined with differentiable=True"):
        lk.DataChain(double_well, n_steps=2, step_size=0.1, noise_scale=0.1, compile=True, differentiable=True)
    with pytest.raises(TypeError, match="compile must be True, False or a dict"):
        lk.DataChain(double_well, n_steps=2, step_size=0.1, noise_scale=0.1, compile="yes")
    with pytest.raises(ValueError, match="compile_block=0 must be an int >= 1"):
        lk.DataChain(double_well, n_steps=2, step_size=0.1, noise_scale=0.1, compile=True, compile_block=0)


@pytest.mark.slow
@pytest.mark.parametrize("compile_block", [None, 5], ids=["scan", "blocks"])
def test_inductor_compiled_chain_equals_uncompiled(compile_block, one_thread):
    common = dict(n_steps=10, step_size=0.01, noise_scale=0.02 ** 0.5, seed=3)
    x0 = torch.randn(64, 2)
    want = lk.DataChain(double_well, **common).run(x0)
    chain = lk.DataChain(double_well, compile=True, compile_block=compile_block, **common)
    got = chain.run(x0)
    assert chain.compile_failed is None
    if compile_block is not None or torch.__version__ >= (2, 13):
        # torch 2.11 and 2.12: inductor's C++ wrapper cannot lower the scan, and blocks run instead (docs/chains.md)
        assert (chain._runner.scan_failed is None) == (compile_block is None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cpu_blocks_default_to_the_cpp_wrapper():
    """Inductor on the CPU gets cpp_wrapper=True beneath the user's own options; a mode (which
    torch.compile takes instead of options), another backend and CUDA get nothing added."""
    from langevin_kernels.compiled import compile_options, device_compile_options
    plain = compile_options(True)
    assert device_compile_options(plain, "cpu") == {**plain, "options": {"cpp_wrapper": True}}
    assert device_compile_options(plain, "cuda") == plain
    mine = compile_options({"options": {"cpp_wrapper": False, "max_autotune": True}})
    assert device_compile_options(mine, "cpu")["options"] == {"cpp_wrapper": False, "max_autotune": True}
    for other in ({"mode": "max-autotune-no-cudagraphs"}, {"backend": "aot_eager"}):
        assert device_compile_options(compile_options(other), "cpu") == compile_options(other)


def test_noise_drawn_in_chunks_equals_one_draw(one_thread, monkeypatch):
    """Noise drawn for several blocks at once, sliced per block: with a draw budget smaller than
    the run (one block per draw) and larger (one draw per run), the same states and stats."""
    import langevin_kernels.compiled as compiled
    common = dict(n_steps=12, step_size=0.01, noise_scale=0.1, seed=9, mala=True, compile={"backend": "aot_eager"},
                  compile_block=4)
    x0 = torch.randn(8, 3)    # 24 elements: 6 offsets per step, 24 normals per step row
    want = lk.DataChain(double_well, **common).run(x0)
    monkeypatch.setattr(compiled, "NOISE_DRAW_NUMBERS", 24 * 4)     # exactly one 4-step block per draw
    chain = lk.DataChain(double_well, **common)
    got = chain.run(x0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)           # same graph, same normals: bit-equal
    assert chain._runner._plan(x0).per_draw == 1
    assert chain.stats.acceptance.shape == (12,)


# ----------------------------------------------------------------------------- adapted per-chain MALA

def _adapted(energy, **kwargs):
    options = dict(n_steps=12, step_size=0.01, noise_scale=0.02 ** 0.5, mala=True, adapt_step_size=True,
                   warmup=40, seed=4)
    options.update(kwargs)
    return lk.DataChain(energy, **options)


@pytest.mark.parametrize("clamp", [None, (-3.0, 3.0)])
def test_adapted_mala_compiled_equals_uncompiled(clamp, one_thread):
    """Warm-up (eager in both) tunes the same per-chain steps; the kept steps then run as compiled
    blocks with [B] step sizes and noise scales: same states, same accept decisions."""
    target = IllConditionedGaussian()
    x0 = target.mean + torch.logspace(-2, 1, 16, dtype=torch.float64)[:, None] * torch.randn(16, 10, dtype=torch.float64)
    plain = _adapted(target.energy, clamp=clamp)
    compiled = _adapted(target.energy, clamp=clamp, compile={"backend": "aot_eager"}, compile_block=5)
    for _ in range(2):   # the first run adapts, the second reuses the frozen steps
        want, got = plain.run(x0), compiled.run(x0)
        torch.testing.assert_close(compiled.step_sizes_per_chain, plain.step_sizes_per_chain, rtol=1e-12, atol=0)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        assert compiled.offset == plain.offset
        assert torch.equal(compiled.stats.acceptance_per_chain, plain.stats.acceptance_per_chain)
    assert compiled.compile_failed is None
    assert len(set(plain.step_sizes_per_chain.tolist())) > 1     # really per-chain steps


def test_new_per_chain_steps_do_not_recompile(one_thread):
    """Per-chain steps are graph inputs: assigning new ones (or loading them) reuses the graph,
    and each run equals the uncompiled chain with the same steps."""
    torch._dynamo.reset()
    counter = CountingBackend()
    target = IllConditionedGaussian()
    x0 = target.sample(8, generator=torch.Generator().manual_seed(1)).float()
    compiled = _adapted(target.energy, warmup=0, compile={"backend": counter}, compile_block=4)
    plain = _adapted(target.energy, warmup=0)
    for scale in (1.0, 0.3, 2.0):
        steps = scale * torch.logspace(-3, -1, 8, dtype=torch.float64)
        compiled.step_sizes_per_chain = plain.step_sizes_per_chain = steps
        torch.testing.assert_close(compiled.run(x0), plain.run(x0), rtol=1e-5, atol=1e-5)
        assert torch.equal(compiled.stats.acceptance_per_chain, plain.stats.acceptance_per_chain)
    assert counter.graphs == 1          # 12 steps = 3 blocks of 4, three sets of steps: one graph


def test_adapted_latent_chain_compiled_equals_uncompiled(one_thread):
    gen = nn.Linear(3, 5).double()
    z0, x = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 5, dtype=torch.float64)
    common = dict(sigma=0.5, n_steps=6, step_size=0.01, noise_scale=0.02 ** 0.5, mala=True, adapt_step_size=True,
                  warmup=20, seed=2)
    plain = lk.LatentChain(gen, **common)
    compiled = lk.LatentChain(gen, compile={"backend": "aot_eager"}, **common)
    torch.testing.assert_close(compiled.run(z0, x), plain.run(z0, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(compiled.step_sizes_per_chain, plain.step_sizes_per_chain, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_inductor_adapted_mala_equals_uncompiled(one_thread):
    target = IllConditionedGaussian()
    x0 = target.sample(32, generator=torch.Generator().manual_seed(2))
    plain, compiled = _adapted(target.energy, n_steps=8), _adapted(target.energy, n_steps=8, compile=True,
                                                                      compile_block=4)
    torch.testing.assert_close(compiled.run(x0), plain.run(x0), rtol=1e-10, atol=1e-10)
    assert compiled.compile_failed is None
    assert torch.equal(compiled.stats.acceptance_per_chain, plain.stats.acceptance_per_chain)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["data", "mala", "latent"])
def test_compiled_and_captured_on_cuda_equals_uncompiled(kind):
    """compile=True with capture_graph=True: replays of compiled blocks equal the plain chain, and
    really are compiled (on torch 2.11 the blocks once fell back with a warning only)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    net = mlp(4).cuda()
    steps = dict(n_steps=10, step_size=0.01, noise_scale=0.1, seed=5, offset=3)
    if kind == "latent":
        gen = nn.Linear(4, 6).cuda()
        make = lambda **o: lk.LatentChain(gen, sigma=0.5, **steps, **o)
        z0 = torch.randn(32, 4, device="cuda")
        observations = [torch.randn(32, 6, device="cuda") for _ in range(3)]
        runs = [lambda c, x=x: c.run(z0, x) for x in observations]
    else:
        make = lambda **o: lk.DataChain(lambda x: net(x).squeeze(1), mala=kind == "mala", clamp=(-3.0, 3.0),
                                        **steps, **o)
        x0 = torch.randn(64, 4, device="cuda")
        runs = [lambda c: c.run(x0)] * 3
    plain, fast = make(), make(compile=True, capture_graph=True, compile_block=5)
    outputs = []
    for run in runs:   # the first run captures, the others replay (fresh noise each)
        want, got = run(plain), run(fast)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert fast.offset == plain.offset
        outputs.append(got)
    assert not torch.equal(outputs[1], outputs[2]) or kind == "latent"
    assert fast.compile_failed is None and fast.compile_seconds > 0
    assert fast._graph is not None
