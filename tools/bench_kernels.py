#!/usr/bin/env python3
"""Benchmark pysoftlabel's fused kernels against what users run instead, in one run.

Forward + backward of the loss for N x C logits and five targets (label smoothing, OLS class table, mixup,
dense probabilities, a teacher's logits as LDL and KD give them) beside PyTorch eager, torch.compile and Liger
Kernel (label smoothing), the memory floor 2*N*C*bytes / bandwidth (bandwidth: a device copy measured in the
same run), and the statistics (calibration vs torchmetrics and eager; class statistics vs eager index_add_;
both fused into the loss vs the loss alone). The anchors measured earlier on the same kind of machine
(tools/anchors-*.json) are printed beside.

    python tools/bench_kernels.py --device cuda --out gpu-results/bench_kernels.json
    python tools/bench_kernels.py --device cpu            # 4096 x 1000 fp32, the CPU targets
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import pysoftlabel as psl
from pysoftlabel.atomic import write_text_atomically
from pysoftlabel.jsontext import json_text

GPU_SHAPES = [(256, 1000), (4096, 1000), (8192, 32000), (4096, 128000)]
CPU_SHAPES = [(4096, 1000)]
TARGETS = ("ls", "ols", "mixup", "dense", "teacher")


def timer(device, warmup, reps):
    """measure(fn): median milliseconds of fn() over reps runs after warmup runs (CUDA events on the GPU,
    perf_counter on the CPU); measure.together({name: fn}): the same for several functions. On the CPU their
    runs alternate, so that the slow spells of a shared machine (one function's median moved from 2.6 to
    7.9 ms between runs here) fall on all of them alike and their ratios hold; on the GPU, where timings are
    steady, they are measured one after the other."""
    def cuda_median(fn):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    def together(fns):
        if device.type == "cuda":
            return {name: cuda_median(fn) for name, fn in fns.items()}
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times = {name: [] for name in fns}
        for _ in range(reps):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
        return {name: statistics.median(t) for name, t in times.items()}

    def measure(fn):
        return together({"fn": fn})["fn"]

    measure.together = together
    return measure


def graph_timer(warmup, reps):
    """Median milliseconds of a CUDA-graph replay of fn(): device time without the CPU's launch cost
    (what a training step captured with CUDA graphs, or a busy GPU queue, sees). None where fn cannot
    be captured (for example a host synchronisation inside it)."""
    def measure(fn):
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
        except Exception:  # noqa: BLE001 - any capture failure means "not capturable"
            torch.cuda.synchronize()
            return None
        return timer(torch.device("cuda"), warmup, reps)(graph.replay)
    return measure


def copy_bandwidth(device, measure):
    """Bytes read + written per second of a large device copy."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = measure(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def make_case(n, c, dtype, device, kind, g):
    x = (torch.randn(n, c, generator=g, device=device) * 2).to(dtype).requires_grad_(True)
    y = torch.randint(0, c, (n,), generator=g, device=device)
    case = {"x": x, "y": y}
    if kind == "ls":
        case["target"] = psl.SoftTarget(y, smoothing=0.1)
    elif kind == "ols":
        table = torch.softmax(torch.randn(c, c, generator=g, device=device), 1) if c <= 32000 else None
        case["table"] = table
        case["target"] = psl.SoftTarget(y, table=table, table_weight=0.5) if table is not None else None
    elif kind == "mixup":
        y2 = torch.randint(0, c, (n,), generator=g, device=device)
        case.update(y2=y2, lam=0.7, target=psl.SoftTarget(y, labels2=y2, lam=0.7))
    elif kind == "dense":
        probs = torch.softmax(torch.randn(n, c, generator=g, device=device), 1).to(dtype)
        case.update(probs=probs, target=psl.SoftTarget(y, dense=probs, dense_weight=1.0))
    else:  # a frozen teacher's logits, softmax at T = 1 (LDL's target)
        teacher = (torch.randn(n, c, generator=g, device=device) * 2).to(dtype)
        case.update(teacher=teacher, target=psl.SoftTarget(y, dense=teacher, dense_logits=True, dense_weight=1.0))
    return case


def eager_loss(kind, case):
    """What a user writes without pysoftlabel, per target kind."""
    x, y = case["x"], case["y"]
    if kind == "ls":
        return lambda: F.cross_entropy(x, y, label_smoothing=0.1)
    if kind == "ols":
        table = case["table"]

        def ols():
            t = 0.5 * F.one_hot(y, x.shape[1]).to(x.dtype) + 0.5 * table[y].to(x.dtype)
            return -(t * F.log_softmax(x, 1)).sum(1).mean()
        return ols
    if kind == "mixup":
        y2, lam = case["y2"], case["lam"]
        return lambda: lam * F.cross_entropy(x, y) + (1 - lam) * F.cross_entropy(x, y2)
    if kind == "dense":
        probs = case["probs"]
        return lambda: F.cross_entropy(x, probs)
    teacher = case["teacher"]
    return lambda: F.cross_entropy(x, torch.softmax(teacher, 1))


def fwd_bwd(loss_fn, x):
    def step():
        torch.autograd.grad(loss_fn(), x)
    return step


def liger_loss(case):
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError:
        return None
    loss = LigerCrossEntropyLoss(label_smoothing=0.1)
    return lambda: loss(case["x"], case["y"])


def bench_losses(device, dtypes, shapes, measure, bandwidth, with_compile, rows, graphed=None):
    g = torch.Generator(device=device).manual_seed(0)
    for dtype in dtypes:
        for n, c in shapes:
            row = {"dtype": str(dtype).replace("torch.", ""), "N": n, "C": c}
            bytes_ = torch.finfo(dtype).bits // 8
            row["floor_ms"] = 2 * n * c * bytes_ / bandwidth * 1e3
            for kind in TARGETS:
                case = make_case(n, c, dtype, device, kind, g)
                if case["target"] is None:
                    continue  # C x C table of 128000^2 floats does not fit: no OLS at that size
                x, y, target = case["x"], case["y"], case["target"]
                ours = fwd_bwd(lambda: psl.soft_cross_entropy(x, target), x)
                eager = fwd_bwd(eager_loss(kind, case), x)
                pair = {f"ours_{kind}": ours, f"eager_{kind}": eager}
                if kind == "ls" and device.type == "cpu":
                    pair["eager_ce"] = fwd_bwd(lambda: F.cross_entropy(x, y), x)
                row.update(measure.together(pair))
                if graphed is not None:
                    row[f"graph_ours_{kind}"] = graphed(ours)
                    row[f"graph_eager_{kind}"] = graphed(eager)
                if with_compile and kind in ("ls", "ols"):
                    compiled = torch.compile(eager_loss(kind, case))
                    row[f"compiled_{kind}"] = measure(fwd_bwd(compiled, x))
                if kind == "ls" and device.type == "cuda":
                    liger = liger_loss(case)
                    if liger is not None:
                        row["liger_ls"] = measure(fwd_bwd(liger, x))
            bench_statistics(device, dtype, n, c, measure, row, g, bandwidth)
            rows.append(row)
            print(json_text(row), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def bench_statistics(device, dtype, n, c, measure, row, g, bandwidth):
    x = (torch.randn(n, c, generator=g, device=device) * 2).to(dtype)
    y = torch.randint(0, c, (n,), generator=g, device=device)
    row["read_once_ms"] = n * c * (torch.finfo(dtype).bits // 8) / bandwidth * 1e3
    cal = psl.CalibrationStats(15, device)

    def eager_calib():
        p = torch.softmax(x.float(), 1)
        conf, pred = p.max(1)
        b = (torch.ceil(conf * 15).long() - 1).clamp(0, 14)
        torch.zeros(15, device=device).index_add_(0, b, conf)
        torch.zeros(15, device=device).index_add_(0, b, (pred == y).float())
    calib = {"ours_calib": lambda: cal.update(x, y), "eager_calib": eager_calib}
    try:
        from torchmetrics.classification import MulticlassCalibrationError
        metric = MulticlassCalibrationError(num_classes=c, n_bins=15, norm="l1").to(device)
        calib["torchmetrics_calib"] = lambda: metric.update(x, y)
    except ImportError:
        pass
    row.update(measure.together(calib))
    if c <= 32000:
        stats = psl.ClassStats(c, device)
        acc_sum = torch.zeros(c, c, device=device)
        acc_count = torch.zeros(c, device=device)

        def eager_class_stats():
            p = torch.softmax(x.float(), 1)
            correct = p.argmax(1) == y
            acc_sum.index_add_(0, y[correct], p[correct])
            acc_count.index_add_(0, y[correct], torch.ones_like(y[correct], dtype=torch.float32))
        row.update(measure.together({"ours_class_stats": lambda: stats.update(x, y),
                                     "eager_class_stats": eager_class_stats}))
        xg = x.clone().requires_grad_(True)
        target = psl.SoftTarget(y, smoothing=0.1)
        row.update(measure.together({
            "ours_ls_fused_stats": fwd_bwd(lambda: psl.soft_cross_entropy(xg, target, stats=stats, calib=cal), xg),
            "ours_ls_same_input": fwd_bwd(lambda: psl.soft_cross_entropy(xg, target), xg)}))


def table(rows, anchors):
    """Markdown table: each of our figures beside the baselines and the anchor from the reference file."""
    anchor_rows = {(a.get("dtype", "float32"), a["N"], a["C"]): a for a in anchors.get("rows", [])}
    lines = ["| dtype | N x C | target | ours ms | eager ms | compile ms | liger ms | floor ms | ours/floor "
             "| eager/ours | compile/ours | liger/ours | anchor eager / compile / liger ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = anchor_rows.get((r["dtype"], r["N"], r["C"]), {})
        for kind in TARGETS:
            ours = r.get(f"ours_{kind}")
            if ours is None:
                continue
            eager, comp = r.get(f"eager_{kind}"), r.get(f"compiled_{kind}")
            liger = r.get("liger_ls") if kind == "ls" else None
            anchor = " / ".join(_fmt(_anchor(a, prefix, kind)) for prefix in ("eager", "compiled", "liger"))
            lines.append(f"| {r['dtype']} | {r['N']}x{r['C']} | {kind} | {_fmt(ours)} | {_fmt(eager)} | "
                         f"{_fmt(comp)} | {_fmt(liger)} | {_fmt(r['floor_ms'])} | {_ratio(ours, r['floor_ms'])} | "
                         f"{_ratio(eager, ours)} | {_ratio(comp, ours)} | {_ratio(liger, ours)} | {anchor} |")
    for r in rows:
        if r.get("eager_ce") is not None:
            a = anchor_rows.get((r["dtype"], r["N"], r["C"]), {})
            lines.append(f"| {r['dtype']} | {r['N']}x{r['C']} | hard CE (eager F.cross_entropy) vs ours ls | "
                         f"{_fmt(r['ours_ls'])} | {_fmt(r['eager_ce'])} | - | - | - | - | "
                         f"{_ratio(r['eager_ce'], r['ours_ls'])} | - | - | "
                         f"{_fmt(a.get('eager_ce_fwd_bwd_ms'))} / - / - |")
    if any("graph_ours_ls" in r for r in rows):
        lines += ["", "CUDA-graph replay (device time, no launch cost):", "",
                  "| dtype | N x C | target | ours ms | eager ms | eager/ours |", "|---|---|---|---|---|---|"]
        for r in rows:
            for kind in TARGETS:
                if r.get(f"graph_ours_{kind}") is not None:
                    ours, eager = r[f"graph_ours_{kind}"], r.get(f"graph_eager_{kind}")
                    lines.append(f"| {r['dtype']} | {r['N']}x{r['C']} | {kind} | {_fmt(ours)} | {_fmt(eager)} | "
                                 f"{_ratio(eager, ours)} |")
    lines += ["", "| dtype | N x C | calib ours ms | calib torchmetrics ms | calib eager ms | read-once ms "
              "| class stats ours ms | class stats eager ms | LS fused stats+calib ms | LS alone ms | fused overhead "
              "| anchor torchmetrics / eager accum ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = anchor_rows.get((r["dtype"], r["N"], r["C"]), {})
        fused, alone = r.get("ours_ls_fused_stats"), r.get("ours_ls_same_input")
        overhead = f"{(fused / alone - 1) * 100:.1f}%" if fused and alone else "-"
        lines.append(f"| {r['dtype']} | {r['N']}x{r['C']} | {_fmt(r.get('ours_calib'))} | "
                     f"{_fmt(r.get('torchmetrics_calib'))} | {_fmt(r.get('eager_calib'))} | "
                     f"{_fmt(r.get('read_once_ms'))} | {_fmt(r.get('ours_class_stats'))} | "
                     f"{_fmt(r.get('eager_class_stats'))} | {_fmt(fused)} | {_fmt(alone)} | {overhead} | "
                     f"{_fmt(a.get('torchmetrics_ece_update_ms', a.get('torchmetrics_ece_update')))} / "
                     f"{_fmt(a.get('eager_ols_accum_ms', a.get('eager_ols_accum')))} |")
    return "\n".join(lines)


def _anchor(a, prefix, kind):
    """An anchor figure: the H100 file names targets ls / ols_gather / soft_given, the CPU file
    ls_fwd_bwd_ms / ols_fwd_bwd_ms."""
    key = {"ls": "ls", "ols": "ols_gather", "dense": "soft_given"}.get(kind)
    if key is None:
        return None
    return a.get(f"{prefix}_{key}", a.get(f"{prefix}_{kind}_fwd_bwd_ms"))


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"


def _ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default=None, help="comma list (default: float32,bfloat16 on GPU; float32 on CPU)")
    parser.add_argument("--shapes", default=None, help="comma list of NxC (default: the issue's shapes)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", default=None, help="write rows as JSON here and the table beside it as .md")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not psl.extension_info()["cuda"]:
        sys.exit("pysoftlabel was built without CUDA kernels: nothing to benchmark on the GPU")
    gpu = device.type == "cuda"
    dtypes = [getattr(torch, d) for d in (args.dtypes or ("float32,bfloat16" if gpu else "float32")).split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else (
        GPU_SHAPES if gpu else CPU_SHAPES)
    measure = timer(device, warmup=10, reps=args.reps or (50 if gpu else 20))
    torch.manual_seed(0)
    bandwidth = copy_bandwidth(device, measure)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; copy bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)
    rows = []
    graphed = graph_timer(warmup=10, reps=args.reps or 50) if gpu else None
    bench_losses(device, dtypes, shapes, measure, bandwidth, not args.no_compile, rows, graphed)
    anchors_path = Path(__file__).with_name("anchors-h100.json" if gpu else "anchors-cpu.json")
    anchors = json.loads(anchors_path.read_text()) if anchors_path.exists() else {}
    text = table(rows, anchors)
    # The GPU anchors were measured on an H100: on another GPU (the device tool also lends H200s) only the
    # baselines measured in this run are comparable.
    elsewhere = " (an H100's: compare with the baselines of this run)" if gpu and "H100" not in name else ""
    header = (f"device: {name}; torch {torch.__version__}; copy bandwidth {bandwidth / 1e9:.0f} GB/s; "
              f"anchors: {anchors_path.name}{elsewhere}")
    print("\n" + header + "\n\n" + text)
    if args.out:
        out = Path(args.out)
        write_text_atomically(out, json_text({"device": name, "torch": torch.__version__, "bandwidth": bandwidth,
                                               "rows": rows}, indent=1))
        write_text_atomically(out.with_suffix(".md"), header + "\n\n" + text + "\n")


if __name__ == "__main__":
    main()
