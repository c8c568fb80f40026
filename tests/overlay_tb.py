"""The overlay engine's stream testbench, shared by its block tests (test_overlay_engine.py,
test_overlay_attention.py): parameter words, then images one value a beat under random
valid/ready stalls, logits collected and checked against golden, bounded by a deadline."""

from shiftacc.sim.streamtb import run_sim, send_params


def image_beats(images):
    """One value a beat, raster then channel order, ``last`` on each image's final value."""
    beats = []
    for img in images:
        flat = img.reshape(-1)
        beats += [{"data": [int(v)], "last": int(k == len(flat) - 1)}
                  for k, v in enumerate(flat)]
    return beats


def run_engine(dut, words, images, classes, rng, p_idle=0.0, p_stall=0.0, deadline=200_000):
    """Load ``words``, stream ``images``, collect the logits; also the cycle at which each
    image's first beat was accepted."""
    got, first = run_phases(dut, [(words, images, classes)], rng, p_idle, p_stall, deadline)
    return got, first


def run_phases(dut, phases, rng, p_idle=0.0, p_stall=0.0, deadline=200_000):
    """For each ``(words, images, classes)`` in turn: load the words, stream the images, wait
    for their logits (one engine, reprogrammed between phases)."""
    total = sum(len(images) * classes for _, images, classes in phases)
    got = []
    state = {"cycle": 0, "first": []}

    async def clock(ctx):
        while len(got) < total:
            await ctx.tick()
            state["cycle"] += 1

    async def producer(ctx):
        done = 0
        for words, images, classes in phases:
            while len(got) < done:          # the previous network's logits are all out
                await ctx.tick()
            done += len(images) * classes
            await send_params(ctx, dut.params, words, rng, p_idle)
            per_image = images[0].size
            for k, b in enumerate(image_beats(images)):
                while rng.random() < p_idle:
                    ctx.set(dut.images.valid, 0)
                    await ctx.tick()
                ctx.set(dut.images.payload, b)
                ctx.set(dut.images.valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(dut.images.ready)
                    if ready:
                        break
                if k % per_image == 0:
                    state["first"].append(state["cycle"])
            ctx.set(dut.images.valid, 0)

    async def consumer(ctx):
        while len(got) < total:
            ready = not rng.random() < p_stall
            ctx.set(dut.logits.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.logits.valid, dut.logits.payload)
            if ready and valid:
                got.append((int(payload.data[0]), int(payload.last)))
        ctx.set(dut.logits.ready, 0)
        for _ in range(50):
            _, _, valid = await ctx.tick().sample(dut.logits.valid)
            assert not valid, "the engine produced more logits than classes x images"

    run_sim(dut, clock, producer, consumer, deadline_cycles=deadline, idle_cycles=20_000)
    return got, state["first"]


def check_logits(got, want):
    n, classes = want.shape
    assert len(got) == n * classes
    for i in range(n):
        for c in range(classes):
            value, last = got[i * classes + c]
            assert value == want[i, c], (f"image {i} class {c}: engine {value}, golden "
                                         f"{want[i, c]}")
            assert last == int(c == classes - 1), f"image {i} class {c}: last = {last}"



def run_with_word_moved_last(dut, nets, late, filler, rng):
    """Two networks loaded one after the other into one engine, the second's parameter word
    ``late`` taken out of its place and given last, after ``filler`` (words that write
    nothing), so that the second network's first image beat follows it in the very next
    cycle; both networks' logits must equal their golden ones.

    Parameters
    ----------
    dut : OverlayEngine
    nets : two (param_words, images, golden logits) tuples
    late : int
        A word of the second network's that differs from what the first left in place (so
        that running without it would give other logits).
    filler : list of int
    rng : numpy.random.Generator
    """
    words = [w for w in nets[1][0] if w != late] + list(filler) + [late]
    phases = [(nets[0][0], nets[0][1], nets[0][2].shape[1]),
              (words, nets[1][1], nets[1][2].shape[1])]
    got, _ = run_phases(dut, phases, rng, 0.0, 0.0)
    split = nets[0][2].size
    check_logits(got[:split], nets[0][2])
    check_logits(got[split:], nets[1][2])
