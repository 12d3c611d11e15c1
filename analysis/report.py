#!/usr/bin/env python3
"""mergelens report: RUN_DIR/report/index.html with PNG figures and tables from the HDF5 files.

usage: report.py RUN_DIR [--out DIR] [--examples N] [--features N] [--strict]

Needs h5py, numpy and matplotlib (Debian: python3-h5py python3-numpy python3-matplotlib; run
with /usr/bin/python3). Every section is optional: missing files give a note, not an error.
A section that fails on a malformed file is reported in the page; --strict makes it fatal.
"""
import argparse
import glob
import html
import json
import os
import sys
import traceback

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import h5py  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mltok import Tokenizer  # noqa: E402

STATUS = {1: "persist", 2: "disappear", 3: "emerge", 4: "dead"}
COLORS = {"persist": "#4c72b0", "disappear": "#dd8452", "emerge": "#55a868", "dead": "#aaaaaa"}
CTRL = {"\n": "\u21b5", "\t": "\u2192", "\x7f": "\u2421"}
CTRL.update({chr(c): chr(0x2400 + c) for c in range(32) if chr(c) not in CTRL})  # visible control bytes
SECTIONS = [("provenance", "Provenance"), ("training", "Training and fine-tuning curves"),
            ("evaluation", "Per-domain loss and accuracy"), ("sweeps", "Merge sweeps"),
            ("flow", "Feature flow"), ("correlations", "Max correlation distributions"),
            ("sae", "SAE metrics"), ("features", "Feature examples"), ("tables", "PEFT and weight-space tables")]


# ---------------------------------------------------------------- HDF5 helpers
def astr(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        return astr(v[()])
    return str(v)


def attr(obj, name, default=None):
    if name not in obj.attrs:
        return default
    v = obj.attrs[name]
    if isinstance(v, (bytes, str)):
        return astr(v)
    if isinstance(v, np.ndarray) and v.size == 1:
        return v.reshape(())[()].item()
    if isinstance(v, np.generic):
        return v.item()
    return v


def attr_json(obj, name, default=None):
    v = attr(obj, name)
    if v is None:
        return default
    try:
        return json.loads(v)
    except (ValueError, TypeError):
        return default


def fmt_of(path):
    try:
        with h5py.File(path, "r") as f:
            return attr(f, "format", "")
    except (OSError, KeyError):
        return None


def stem(p):
    b = os.path.basename(str(p))
    return b[:-3] if b.endswith(".h5") else b


def h5files(run, sub):
    return sorted(glob.glob(os.path.join(run, sub, "*.h5")))


def esc(s):
    return html.escape(str(s))


def num(v, digits=4):
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if not np.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return "%.*e" % (digits - 1, v)
    return "%.*g" % (digits, v)


def table(header, rows, cls="t"):
    out = ['<table class="%s"><tr>' % cls + "".join("<th>%s</th>" % esc(h) for h in header) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(('<td class="wrap">%s</td>' if isinstance(c, Wrap) else "<td>%s</td>")
                                    % (c if isinstance(c, Raw) else esc(c)) for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


class Raw(str):
    """Trusted HTML inside a table cell."""


class Wrap(str):
    """A long text cell that wraps (anywhere) instead of widening the table past the page."""


# ---------------------------------------------------------------- report object
class Report:
    def __init__(self, run, out, args):
        self.run, self.out, self.args = run, out, args
        self.parts = {k: [] for k, _ in SECTIONS}
        self.nfig = 0
        self.pages = []
        self._tok = False

    def add(self, sec, text):
        self.parts[sec].append(text)

    def note(self, sec, text):
        self.add(sec, '<p class="note">%s</p>' % esc(text))

    def figure(self, sec, fig, caption):
        self.nfig += 1
        name = "fig%03d.png" % self.nfig
        # at most ~1100 px wide (the page is 1200 px): wide figures get a lower resolution
        dpi = min(90.0, 1000.0 / max(1e-6, fig.get_size_inches()[0]))
        fig.savefig(os.path.join(self.out, name), dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        self.add(sec, '<figure><img src="%s" alt="%s"><figcaption>%s</figcaption></figure>'
                 % (name, esc(caption), esc(caption)))

    def tokenizer(self):
        """The run's tokenizer (or None), searched once."""
        if self._tok is not False:
            return self._tok
        self._tok = None
        cands = []
        for p in h5files(self.run, "models") + h5files(self.run, "data"):
            try:
                with h5py.File(p, "r") as f:
                    fm = attr(f, "format", "")
                    if fm == "mergelens.tokenizer":
                        cands.append(p)
                    elif attr(f, "tokenizer"):
                        cands.append(attr(f, "tokenizer"))
            except OSError:
                continue
        cands += glob.glob(os.path.join(self.run, "data", "*.json"))
        for c in cands:
            for p in (c, os.path.join(self.run, c), os.path.join(os.path.dirname(self.run), c),
                      os.path.join(self.run, "data", os.path.basename(c))):
                if os.path.isfile(p):
                    try:
                        self._tok = Tokenizer(p)
                        return self._tok
                    except (OSError, ValueError, KeyError):
                        continue
        return None


# ---------------------------------------------------------------- provenance
def sec_provenance(R):
    path = os.path.join(R.run, "experiment.h5")
    if not os.path.isfile(path):
        R.note("provenance", "no experiment.h5 in the run directory (not written by `mergelens run`).")
    else:
        with h5py.File(path, "r") as f:
            rows = [(k, attr(f, k)) for k in ("job_file", "run_dir", "started", "finished", "ranks", "hosts",
                                              "mergelens_version", "git_commit") if k in f.attrs]
            R.add("provenance", table(["key", "value"], rows))
            if "stages" in f:
                st = []
                for name in f["stages"]:
                    g = f["stages"][name]
                    argv = attr_json(g, "argv", [])
                    status, secs = attr(g, "status", ""), attr(g, "seconds", 0.0)
                    try:  # the stage's own record (RUN_DIR/records/) is the newest word on it
                        with open(os.path.join(R.run, "records", name + ".json")) as rf:
                            rec = json.load(rf)
                        status, secs = rec.get("status", status), rec.get("seconds", secs)
                    except (OSError, ValueError):
                        pass
                    st.append((name, attr(g, "command", ""), status, num(secs, 3),
                               Wrap(" ".join(argv) if isinstance(argv, list) else "")))
                R.add("provenance", "<h3>Stages</h3>" + table(["stage", "command", "status", "seconds", "argv"], st))
            if attr(f, "job_yaml"):
                R.add("provenance", "<details><summary>job file</summary><pre>%s</pre></details>"
                      % esc(attr(f, "job_yaml")))
    inv = []
    for sub in ("data", "models", "acts", "saes", "sweeps", "tracking"):
        for p in h5files(R.run, sub):
            try:
                with h5py.File(p, "r") as f:
                    inv.append((os.path.join(sub, os.path.basename(p)), attr(f, "format", ""),
                                attr(f, "format_version", ""), "%.1f MB" % (os.path.getsize(p) / 1e6)))
            except OSError as e:
                inv.append((os.path.join(sub, os.path.basename(p)), "unreadable: %s" % e, "", ""))
    if inv:
        R.add("provenance", "<h3>Files</h3>" + table(["file", "format", "version", "size"], inv))


# ---------------------------------------------------------------- models
def load_models(R):
    """name -> dict(path, kind, parent, log, eval{domain: (loss, acc)})"""
    models = {}
    for p in h5files(R.run, "models"):
        with h5py.File(p, "r") as f:
            if attr(f, "format") != "mergelens.checkpoint":
                continue
            m = {"path": p, "parent": stem(attr(f, "parent", "") or ""), "log": None, "eval": {}}
            m["kind"] = "merge" if "merge_recipe" in f.attrs else ("fine-tune" if attr(f, "parent") else "base")
            if "train/log/loss" in f:
                lg = f["train/log"]
                m["log"] = {k: np.asarray(lg[k][()]) for k in lg if isinstance(lg[k], h5py.Dataset)}
            if "train/eval/loss" in f:
                ev = f["train/eval"]
                doms = attr_json(ev, "domains", [])
                step, dom = np.asarray(ev["step"][()]), np.asarray(ev["domain"][()])
                loss, acc = np.asarray(ev["loss"][()]), np.asarray(ev["accuracy"][()])
                ntok = np.asarray(ev["n_tokens"][()]) if "n_tokens" in ev else np.full(len(step), -1)
                m["evallog"] = (doms, step, dom, loss, acc)
                if len(step):
                    last = step == step.max()
                    for d, l, a, n in zip(dom[last], loss[last], acc[last], ntok[last]):
                        name = doms[d] if 0 <= d < len(doms) else "domain%d" % d
                        m["eval"][name] = (float(l), float(a), "train/eval step %d" % step.max(),
                                           int(n) if n >= 0 else None)
        models[stem(p)] = m
    # separate `mergelens eval --out` files override the in-training rows
    for p in sorted(set(glob.glob(os.path.join(R.run, "*", "*.h5")) + glob.glob(os.path.join(R.run, "*.h5")))):
        if fmt_of(p) != "mergelens.eval":
            continue
        with h5py.File(p, "r") as f:
            target = stem(attr(f, "model", ""))
            doms = attr_json(f, "domains", [])
            if target not in models:
                models[target] = {"path": attr(f, "model", ""), "kind": "?", "parent": "", "log": None, "eval": {}}
            ntok = f["n_tokens"] if "n_tokens" in f else f["n_targets"] if "n_targets" in f else None
            for i, d in enumerate(doms):
                models[target]["eval"][d] = (float(f["loss"][i]), float(f["accuracy"][i]),
                                             os.path.relpath(p, R.run), int(ntok[i]) if ntok is not None else None)
            models[target]["eval_file"] = {"order": attr(f, "eval_order", "sequential (before eval_order)"),
                                           "seed": attr(f, "eval_seed"), "path": os.path.relpath(p, R.run)}
    return models


def sec_training(R, models):
    n = 0
    for name, m in models.items():
        lg = m["log"]
        if lg is None or "loss" not in lg or not len(lg["loss"]):
            continue
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
        step = lg.get("step", np.arange(1, len(lg["loss"]) + 1))
        loss = lg["loss"]
        ax[0].plot(step, loss, lw=0.8, alpha=0.5, label="train loss")
        w = max(1, len(loss) // 50)
        if w > 1:
            sm = np.convolve(loss, np.ones(w) / w, mode="valid")
            ax[0].plot(step[w - 1:], sm, lw=1.5, label="train (mean of %d)" % w)
        if "evallog" in m:
            doms, es, ed, el, _ = m["evallog"]
            for d in np.unique(ed):
                k = ed == d
                ax[0].plot(es[k], el[k], "o--", ms=4, label="val %s" % (doms[d] if d < len(doms) else d))
        ax[0].set_xlabel("step")
        ax[0].set_ylabel("loss (nats/token)")
        ax[0].set_title("%s (%s)" % (name, m["kind"]))
        ax[0].legend(fontsize=7)
        if "lr" in lg:
            ax[1].plot(step, lg["lr"], color="C3", label="lr")
            ax[1].set_ylabel("learning rate")
        if "grad_norm" in lg:
            a2 = ax[1].twinx()
            a2.plot(step, lg["grad_norm"], color="C4", lw=0.7, label="grad norm")
            a2.set_ylabel("gradient norm")
        ax[1].set_xlabel("step")
        ax[1].set_title("schedule")
        R.figure("training", fig, "%s: training loss, validation loss per domain, learning rate and gradient norm"
                 % name)
        n += 1
    if not n:
        R.note("training", "no checkpoint in models/ holds /train/log.")


def tokens_text(n):
    return "?" if n is None else ("%.1fk" % (n / 1000.0) if n >= 1000 else str(n))


def sec_evaluation(R, models):
    rows = {k: m for k, m in models.items() if m["eval"]}
    if not rows:
        R.note("evaluation", "no per-domain evaluation found (/train/eval in checkpoints or mergelens.eval files).")
        return
    doms = sorted({d for m in rows.values() for d in m["eval"]})
    order = sorted(rows, key=lambda k: ({"base": 0, "fine-tune": 1, "merge": 2}.get(rows[k]["kind"], 3), k))
    hdr = (["model", "kind", "parent"] + ["%s loss" % d for d in doms] + ["%s acc" % d for d in doms] +
           ["%s tokens" % d for d in doms] + ["source"])
    body = []
    for k in order:
        e = rows[k]["eval"]
        body.append([k, rows[k]["kind"], rows[k]["parent"]] +
                    [num(e[d][0]) if d in e else "" for d in doms] + [num(e[d][1]) if d in e else "" for d in doms] +
                    [(e[d][3] if e[d][3] is not None else "?") if d in e else "" for d in doms] +
                    [Wrap(", ".join(sorted({v[2] for v in e.values()})))])
    R.add("evaluation", "<p>Loss in nats per token (mean next-token cross-entropy) and next-token accuracy on "
          "each domain's validation split; <i>tokens</i> = targets scored. Numbers from different sources "
          "(in-training evaluation, <code>mergelens eval</code> files) may use different windows.</p>")
    R.add("evaluation", table(hdr, body))
    files = [(k, rows[k]["eval_file"]) for k in order if "eval_file" in rows[k]]
    if files:
        R.add("evaluation", "<p>eval files: %s</p>" % esc("; ".join(
            "%s (windows %s, eval_seed %s)" % (v["path"], v["order"], v["seed"]) for _, v in files)))
    # the models x domains loss table as a heat-map (annotated with the loss and the token count)
    L = np.array([[rows[k]["eval"][d][0] if d in rows[k]["eval"] else np.nan for d in doms] for k in order])
    fig, ax = plt.subplots(figsize=(1.6 * len(doms) + 3, 0.55 * len(order) + 2))
    im = ax.imshow(L, cmap="viridis_r", aspect="auto")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("validation loss (nats/token)")
    ax.set_xticks(range(len(doms)))
    ax.set_xticklabels(doms)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(["%s (%s)" % (k, rows[k]["kind"]) for k in order])
    ax.set_xlabel("evaluation domain (validation split)")
    ax.set_ylabel("model")
    fin = L[np.isfinite(L)]
    mid = (fin.min() + fin.max()) / 2 if fin.size else 0
    for i, k in enumerate(order):
        for j, d in enumerate(doms):
            if d in rows[k]["eval"]:
                v = rows[k]["eval"][d]
                ax.text(j, i, "%s\n%s tok" % (num(v[0], 3), tokens_text(v[3])), ha="center", va="center",
                        fontsize=8, color="w" if v[0] > mid else "k")
    ax.set_title("loss per model and domain (lower is better)")
    R.figure("evaluation", fig, "validation loss (nats/token) of every model on every domain; each cell gives "
             "the loss and the number of tokens scored")
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
    wd = 0.8 / max(1, len(order))
    x = np.arange(len(doms))
    for i, k in enumerate(order):
        e = rows[k]["eval"]
        ax[0].bar(x + i * wd, [e[d][0] if d in e else np.nan for d in doms], wd, label=k)
        ax[1].bar(x + i * wd, [e[d][1] if d in e else np.nan for d in doms], wd, label=k)
    for a, t, yl in zip(ax, ("validation loss", "next-token accuracy"),
                        ("loss (nats/token)", "accuracy (fraction of tokens)")):
        a.set_xticks(x + 0.4 - wd / 2)
        a.set_xticklabels(doms)
        a.set_title(t)
        a.set_xlabel("evaluation domain")
        a.set_ylabel(yl)
    ax[1].legend(fontsize=7)
    R.figure("evaluation", fig, "per-domain validation loss and accuracy of every model")


# ---------------------------------------------------------------- sweeps
def sec_sweeps(R, models):
    files = [p for p in h5files(R.run, "sweeps") if fmt_of(p) == "mergelens.sweep"]
    if not files:
        R.note("sweeps", "no merge sweep (sweeps/*.h5, format mergelens.sweep).")
        return
    for p in files:
        with h5py.File(p, "r") as f:
            if int(attr(f, "complete", 1)) == 0:  # a checkpoint of an interrupted sweep: rows missing (NaN)
                msg = ("%s: an interrupted sweep (complete = 0, %s points done): rerun its `mergelens sweep` "
                       "command to finish it; not shown" % (p, attr(f, "points_done", "?")))
                R.note("sweeps", msg)
                print("report: " + msg, file=sys.stderr)
                continue
            grid = np.asarray(f["grid"][()], dtype=float)
            loss, acc = np.atleast_2d(f["loss"][()]), np.atleast_2d(f["accuracy"][()])
            doms = attr_json(f, "domains", None) or ["domain%d" % d for d in range(loss.shape[1])]
            param = attr(f, "param", "t")
            rl = np.asarray(f["reference/loss"][()]) if "reference/loss" in f else None
            ra = np.asarray(f["reference/accuracy"][()]) if "reference/accuracy" in f else None
            refname = attr(f["reference"], "model", "base model") if "reference" in f else "base model"
            tokens = np.asarray(f["tokens"][()]) if "tokens" in f else None
            direction = sweep_direction(param, attr(f, "from"), attr(f, "to"), attr_json(f, "models", None))
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
        for d, dn in enumerate(doms):
            c = "C%d" % d
            ax[0].plot(grid, loss[:, d], "o-", color=c, label=dn)
            ax[1].plot(grid, acc[:, d], "o-", color=c, label=dn)
            if rl is not None:
                ax[0].axhline(rl[d], ls="--", color=c, lw=1, label="%s (%s)" % (dn, refname))
            if ra is not None:
                ax[1].axhline(ra[d], ls="--", color=c, lw=1, label="%s (%s)" % (dn, refname))
        for a, t, yl in zip(ax, ("validation loss", "next-token accuracy"),
                            ("loss (nats/token)", "accuracy (fraction of tokens)")):
            a.set_xlabel("%s (%s)" % (param, direction))
            a.set_ylabel(yl)
            a.set_title(t)
        ax[0].legend(fontsize=7)
        tk = ("; tokens per domain and point: %s" % ", ".join("%s %s" % (dn, tokens_text(int(n)))
                                                              for dn, n in zip(doms, tokens))
              if tokens is not None and len(tokens) == len(doms) else "")
        R.figure("sweeps", fig, "%s: loss and accuracy against %s per domain (%s); dashed: %s%s"
                 % (os.path.basename(p), param, direction, refname, tk))
        hdr = [param] + ["%s loss" % d for d in doms] + ["%s acc" % d for d in doms]
        body = [[num(g)] + [num(v) for v in loss[i]] + [num(v) for v in acc[i]] for i, g in enumerate(grid)]
        if rl is not None or ra is not None:
            body.append([refname] + [num(v) for v in (rl if rl is not None else [None] * len(doms))] +
                        [num(v) for v in (ra if ra is not None else [None] * len(doms))])
        R.add("sweeps", "<details><summary>%s values</summary>%s</details>" % (esc(os.path.basename(p)),
                                                                              table(hdr, body)))


def sweep_direction(param, lo, hi, models):
    """What the ends of a sweep are: "t = 0: lua, t = 1: stories" for a two-model recipe (models: the
    sweep file's JSON inputs, base first), else the grid range."""
    lo = 0.0 if lo is None else lo
    hi = 1.0 if hi is None else hi
    if models and len(models) == 2 and param == "t":
        return "%s = 0: %s, %s = 1: %s" % (param, stem(models[0]), param, stem(models[1]))
    if models and len(models) >= 1:
        return "%s from %s to %s; base model %s" % (param, num(lo), num(hi), stem(models[0]))
    return "%s from %s to %s" % (param, num(lo), num(hi))


def sec_track_sweeps(R):
    """track-sweep files (format mergelens.feature_sweep): per merge point, the share of a fine-tuned
    SAE's live features still present in the merged model (r >= tau) and their mean r."""
    files = [p for p in h5files(R.run, "tracking") if fmt_of(p) == "mergelens.feature_sweep"]
    if not files:
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    rows = []
    for k, p in enumerate(files):
        with h5py.File(p, "r") as f:
            grid = np.asarray(f["grid"][()], dtype=float)
            present = np.asarray(f["present"][()], dtype=float)
            mean_r = np.asarray(f["mean_r"][()], dtype=float)
            param, tau = attr(f, "param", "t"), attr(f, "tau", float("nan"))
            sae, live = attr(f, "sae", "?"), attr(f, "n_live", 0)
            direction = "t = 0: the recipe's base_model"
            sw = attr(f, "sweep")
            for cand in (sw, os.path.join(R.run, "sweeps", os.path.basename(str(sw)))):
                if cand and os.path.isfile(cand) and fmt_of(cand) == "mergelens.sweep":
                    with h5py.File(cand, "r") as g:
                        direction = sweep_direction(param, attr(g, "from"), attr(g, "to"), attr_json(g, "models"))
                    break
        name = os.path.basename(p)
        ax[0].plot(grid, present, "o-", color="C%d" % k, label=name)
        ax[1].plot(grid, mean_r, "o-", color="C%d" % k, label=name)
        rows.append([esc(name), esc(os.path.basename(str(sae))), live, num(tau)] +
                    [num(present[i]) for i in (0, len(grid) // 2, len(grid) - 1)])
    ax[0].set_title("share of fine-tuned features present (r >= tau)")
    ax[1].set_title("mean r over live features")
    ax[0].set_ylabel("share of live features")
    ax[1].set_ylabel("mean best-partner Pearson r")
    for a in ax:
        a.set_xlabel("%s (%s)" % (param, direction))
    ax[0].legend(fontsize=7)
    R.figure("sweeps", fig, "fine-tuned SAE features still present along the merge sweep (track-sweep)")
    R.add("sweeps", table(["file", "SAE", "live features", "tau", "present at first point",
                           "at middle point", "at last point"], rows))


# ---------------------------------------------------------------- tracking
def load_tracking(R):
    out = []
    for p in h5files(R.run, "tracking"):
        if fmt_of(p) != "mergelens.tracking":
            continue
        with h5py.File(p, "r") as f:
            tau = attr(f, "tau", 0.8)
            edges = []
            names = attr_json(f["summary"], "edges", None) if "summary" in f else None
            if not names and "edges" in f:
                names = list(f["edges"])
            for e in names or []:
                if "edges" not in f or e not in f["edges"]:
                    continue
                g = f["edges"][e]
                ed = {"name": e, "parent": attr(g, "parent", ""), "child": attr(g, "child", ""),
                      "measure": attr(g, "measure", "activation"), "tau": attr(g, "tau", tau),
                      "parent_sae": attr(g, "parent_sae"), "child_sae": attr(g, "child_sae"),
                      "parent_acts": attr(g, "parent_acts"), "child_acts": attr(g, "child_acts")}
                for k in ("parent_status", "parent_partner", "parent_score", "child_status", "child_partner",
                          "child_score", "counts", "shares"):
                    ed[k] = np.asarray(g[k][()]) if k in g else None
                ed["calibration"] = load_calibration(g["calibration"]) if "calibration" in g else None
                ed["measures"] = {}
                for mname in g:
                    mg = g[mname]
                    if isinstance(mg, h5py.Group) and "a_score" in mg:
                        ed["measures"][mname] = {k: np.asarray(mg[k][()]) for k in ("a_score", "b_score", "a_dead",
                                                                                 "b_dead") if k in mg}
                        ed["measures"][mname]["a_mean"] = attr(mg, "a_mean")
                        ed["measures"][mname]["b_mean"] = attr(mg, "b_mean")
                edges.append(ed)
            out.append({"path": p, "tau": tau, "edges": edges})
    return out


CAL_SETS = ("tau", "persist", "emerge", "disappear", "ceiling", "floor", "normalised")
CAL_ATTRS = ("measure", "interval", "bootstrap", "block_tokens", "n_tokens", "rows_start", "rows_end",
             "replicas_parent", "replicas_child", "stable_min", "ceiling_source", "floor_source")


def load_calibration(g):
    """/edges/<edge>/calibration (the calibration contract): f64 [T] datasets X, X_lo, X_hi for the
    shares, the seed ceiling, the null floor and the normalised persistence, and the attributes."""
    c = {"attrs": {k: attr(g, k) for k in CAL_ATTRS}}
    for k in CAL_SETS:
        for suf in ("", "_lo", "_hi"):
            if k == "tau" and suf:
                continue
            c[k + suf] = np.asarray(g[k + suf][()], dtype=float) if k + suf in g else None
    if c["tau"] is None:
        raise ValueError("%s: no dataset 'tau'" % g.name)
    return c


def cal_at(c, tau):
    """Index of the calibration row nearest to tau."""
    return int(np.argmin(np.abs(c["tau"] - float(tau))))


def band(c, k, i, digits=3):
    """'v [lo, hi]' of dataset k at row i ('n/a' when NaN or absent)."""
    v = c.get(k)
    if v is None or i >= len(v) or not np.isfinite(v[i]):
        return "n/a"
    lo, hi = c.get(k + "_lo"), c.get(k + "_hi")
    if lo is None or hi is None or not (np.isfinite(lo[i]) and np.isfinite(hi[i])):
        return num(v[i], digits)
    return "%s [%s, %s]" % (num(v[i], digits), num(lo[i], digits), num(hi[i], digits))


def sec_calibration(R, tracks):
    """Per tracking file: the calibrated shares of every edge at its tau (share with its bootstrap
    interval, the seed ceiling and null floor bands, the normalised persistence), a figure over tau,
    and the full table per edge."""
    for t in tracks:
        eds = t["edges"]
        if not eds:
            continue
        body, full = [], []
        cal = [ed for ed in eds if ed["calibration"] is not None]
        for ed in eds:
            c = ed["calibration"]
            if c is None:
                body.append([ed["name"], ed["measure"], num(ed["tau"], 3), "no controls computed", "", "", "", "",
                             "", ""])
                continue
            a = c["attrs"]
            i = cal_at(c, ed["tau"])
            ceil = band(c, "ceiling", i)
            if ceil == "n/a":
                ceil = "n/a (%s)" % (a.get("ceiling_source") or "no replicas")
            flo = band(c, "floor", i)
            if flo == "n/a":
                flo = "n/a (%s)" % (a.get("floor_source") or "not computed")
            body.append([ed["name"], a.get("measure") or ed["measure"], num(c["tau"][i], 3), band(c, "persist", i),
                         Wrap(ceil), Wrap(flo), band(c, "normalised", i), band(c, "emerge", i),
                         band(c, "disappear", i), tokens_text(a.get("n_tokens"))])
            rows = [[num(c["tau"][j], 3)] + [band(c, k, j) for k in ("persist", "ceiling", "floor", "normalised",
                                                                      "emerge", "disappear")]
                    for j in range(len(c["tau"]))]
            src = "; ".join("%s = %s" % (k, a[k]) for k in CAL_ATTRS if a.get(k) is not None)
            full.append("<details><summary>%s: every tau</summary><p>%s</p>%s</details>" % (
                esc(ed["name"]), esc(src), table(["tau", "persist", "ceiling", "floor", "normalised", "emerge",
                                                  "disappear"], rows)))
        ivl = next((ed["calibration"]["attrs"].get("interval") for ed in cal), None)
        R.add("flow", "<h3>Calibrated persistence: %s</h3><p>share = persisting share of the parent's live "
              "features; [lo, hi] = %s bootstrap interval over blocks of tokens; ceiling = the same measure "
              "between seed replicas of one model (what persistence looks like when nothing changed); floor = "
              "the measure under no correspondence; normalised = (share - floor) / (ceiling - floor).</p>"
              % (esc(os.path.basename(t["path"])), esc("%g%%" % (100 * ivl) if ivl else "the")))
        R.add("flow", table(["edge", "measure", "tau", "persist share [interval]", "ceiling band", "floor band",
                             "normalised persistence", "emerge share", "disappear share", "tokens"], body))
        R.add("flow", "\n".join(full))
        if not cal:
            R.note("flow", "%s: no controls computed (no /edges/<edge>/calibration group): the shares above are "
                   "raw and uncalibrated." % os.path.basename(t["path"]))
            continue
        fig, axs = plt.subplots(1, len(cal), figsize=(3.6 * len(cal), 3.2), squeeze=False, sharey=True)
        for a, ed in zip(axs[0], cal):
            c = ed["calibration"]
            tau = c["tau"]
            for k, col, lab in (("persist", "C0", "persist share"), ("ceiling", "C2", "seed ceiling"),
                                ("floor", "C7", "null floor")):
                if c[k] is None or not np.any(np.isfinite(c[k])):
                    continue
                a.plot(tau, c[k], "o-", ms=3, color=col, label=lab)
                if c[k + "_lo"] is not None and c[k + "_hi"] is not None:
                    a.fill_between(tau, c[k + "_lo"], c[k + "_hi"], color=col, alpha=0.2)
            a.axvline(ed["tau"], ls="--", color="k", lw=1)
            noceil = c["ceiling"] is None or not np.any(np.isfinite(c["ceiling"]))
            a.set_title("%s%s" % (ed["name"], " (ceiling n/a)" if noceil else ""), fontsize=9)
            a.set_xlabel("tau (%s score)" % (c["attrs"].get("measure") or ed["measure"]))
        axs[0][0].set_ylabel("share of live parent features")
        axs[0][0].legend(fontsize=7)
        R.figure("flow", fig, "%s: persisting share against tau with its interval (shaded), the seed ceiling and "
                 "the null floor; dashed: the edge's tau" % os.path.basename(t["path"]))


def edge_counts(ed):
    if ed["counts"] is not None and len(ed["counts"]) >= 6:
        return [int(v) for v in ed["counts"][:6]]
    ps, cs = ed["parent_status"], ed["child_status"]
    c = lambda s, v: int(np.sum(s == v)) if s is not None else 0  # noqa: E731
    return [c(ps, 1), c(ps, 2), c(ps, 4), c(cs, 1), c(cs, 3), c(cs, 4)]


def sec_flow(R, tracks):
    if not tracks:
        R.note("flow", "no tracking file (tracking/*.h5, format mergelens.tracking).")
        return
    for t in tracks:
        eds = t["edges"]
        if not eds:
            R.note("flow", "%s holds no edge." % os.path.basename(t["path"]))
            continue
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(eds) + 2), 3.8))
        labels, x = [], 0
        body = []
        for ed in eds:
            pp, pd, pdead, cp, ce, cdead = edge_counts(ed)
            for side, segs in (("parent", (("persist", pp), ("disappear", pd), ("dead", pdead))),
                               ("child", (("persist", cp), ("emerge", ce), ("dead", cdead)))):
                bottom = 0
                for st, v in segs:
                    ax.bar(x, v, 0.8, bottom=bottom, color=COLORS[st], label=st if x < 2 else None)
                    bottom += v
                labels.append("%s\n%s" % (ed[side] or side, "(parent)" if side == "parent" else "(child)"))
                x += 1
            x += 0.5
            livep, livec = max(1, pp + pd), max(1, cp + ce)
            body.append([ed["name"], ed["parent"], ed["child"], num(ed["tau"], 3), pp, pd, pdead, cp, ce, cdead,
                         "%.1f%%" % (100 * pp / livep), "%.1f%%" % (100 * pd / livep),
                         "%.1f%%" % (100 * ce / livec)])
        pos = []
        k = 0
        for _ in eds:
            pos += [k, k + 1]
            k += 2.5
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("features (count)")
        ax.set_xlabel("lineage edge: parent and child SAE")
        handles, lab = ax.get_legend_handles_labels()
        seen = {}
        for h, lb in zip(handles, lab):
            seen.setdefault(lb, h)
        ax.legend(seen.values(), seen.keys(), fontsize=7)
        ax.set_title("feature flow (tau = %s)" % num(t["tau"], 3))
        R.figure("flow", fig, "%s: persisting, disappearing (parent side) and emerging (child side) features per "
                 "lineage edge" % os.path.basename(t["path"]))
        R.add("flow", table(["edge", "parent", "child", "tau", "parent persist", "disappear", "parent dead",
                             "child persist", "emerge", "child dead", "persist %", "disappear %", "emerge %"], body))


def sec_correlations(R, tracks):
    eds = [(t, ed) for t in tracks for ed in t["edges"]]
    if not eds:
        R.note("correlations", "no tracking edges, so no correlation distributions.")
        return
    rows = []
    for t, ed in eds:
        ms = ed["measures"]
        panels = [(m, v) for m, v in ms.items()] or [(ed["measure"], {"a_score": ed["parent_score"],
                                                                      "b_score": ed["child_score"]})]
        panels = [(m, v) for m, v in panels if v.get("a_score") is not None]
        if not panels:
            continue
        ncol = min(3, len(panels))
        nrow = (len(panels) + ncol - 1) // ncol
        fig, axs = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3 * nrow), squeeze=False)
        for a in axs.flat[len(panels):]:
            a.set_visible(False)
        for a, (m, v) in zip(axs.flat, panels):
            for side, key, dk, c in (("parent", "a_score", "a_dead", "C0"), ("child", "b_score", "b_dead", "C2")):
                s = np.asarray(v[key], dtype=float)
                if v.get(dk) is not None:
                    s = s[np.asarray(v[dk]) == 0]
                s = s[np.isfinite(s)]
                if len(s):
                    a.hist(s, bins=40, range=(min(-0.05, s.min()), 1.0), alpha=0.55, color=c,
                           label="%s -> %s" % (side, "child" if side == "parent" else "parent"))
            a.axvline(ed["tau"], ls="--", color="k", lw=1)
            a.set_title(m, fontsize=9)
            a.set_xlabel("max score")
            a.legend(fontsize=6)
            rows.append([ed["name"], m, num(v.get("a_mean")), num(v.get("b_mean"))])
        for r in range(nrow):
            axs[r][0].set_ylabel("live features (count)")
        R.figure("correlations", fig, "%s %s: best-partner score of every live feature (dashed: tau)"
                 % (os.path.basename(t["path"]), ed["name"]))
    if rows:
        R.add("correlations", table(["edge", "measure", "mean-max parent", "mean-max child"], rows))


# ---------------------------------------------------------------- SAEs
def load_saes(R):
    out = {}
    for p in h5files(R.run, "saes"):
        with h5py.File(p, "r") as f:
            if attr(f, "format") != "mergelens.sae":
                continue
            s = {"path": p, "model": attr(f, "model", ""), "arch": attr(f, "architecture", ""),
                 "d_in": attr(f, "d_in"), "d_sae": attr(f, "d_sae"), "l1": attr(f, "l1_coefficient"),
                 "k": attr(f, "k"), "hook": attr(f, "hook_name", "")}
            if "metrics" in f:
                g = f["metrics"]
                s["metrics"] = {k: np.asarray(g[k][()]) for k in g if isinstance(g[k], h5py.Dataset)}
                s["hist_lo"], s["hist_step"] = attr(g, "hist_lo", -10.0), attr(g, "hist_step", 0.25)
                if "eval" in g:
                    e = g["eval"]
                    s["eval"] = {k: attr(e, k) for k in e.attrs}
                    if "density_hist" in e:
                        s["eval_hist"] = np.asarray(e["density_hist"][()])
                        s["eval_zero"] = attr(e["density_hist"], "zero", 0)
            s["has_features"] = "features/top_tokens" in f
        out[stem(p)] = s
    return out


def sec_sae(R, saes):
    if not saes:
        R.note("sae", "no SAE file (saes/*.h5, format mergelens.sae).")
        return
    body = []
    for name, s in saes.items():
        m, e = s.get("metrics", {}), s.get("eval", {})

        def last(k):
            return m[k][-1] if k in m and len(m[k]) else None
        body.append([name, s["arch"], s["hook"], s["d_in"], s["d_sae"], num(s["l1"]), s["k"],
                     num(e.get("l0", last("l0"))), num(e.get("fvu", last("fvu"))), num(e.get("mse", last("mse"))),
                     num(e.get("dead_fraction", last("dead_fraction"))),
                     num(e.get("dense_fraction", last("dense_fraction"))), "eval" if e else "last training log"])
    R.add("sae", table(["SAE", "architecture", "hook", "d_in", "d_sae", "l1", "k", "L0", "FVU", "MSE", "dead",
                        "dense", "from"], body))
    for name, s in saes.items():
        for w in dense_warnings(s):
            R.add("sae", '<p class="warn">warning: %s: %s</p>' % (esc(name), esc(w)))
    sec_ce_recovered(R, saes)
    for name, s in saes.items():
        m = s.get("metrics", {})
        keys = [k for k in ("l0", "fvu", "dead_fraction", "dense_fraction") if k in m and len(m[k])]
        hist = s.get("eval_hist")
        zero = s.get("eval_zero", 0)
        if hist is None and "density_hist" in m and len(m["density_hist"]):
            hist = np.asarray(m["density_hist"])[-1]
            zero = int(m["density_hist_zero"][-1]) if "density_hist_zero" in m else 0
        if not keys and hist is None:
            R.note("sae", "%s: no /metrics." % name)
            continue
        n = len(keys) + (hist is not None)
        fig, axs = plt.subplots(1, n, figsize=(2.9 * n, 2.8), squeeze=False)
        x = m.get("tokens", m.get("step"))
        ylab = {"l0": "L0 (active latents per token)", "fvu": "FVU (fraction of variance unexplained)",
                "dead_fraction": "dead latents (fraction of d_sae)", "dense_fraction": "dense latents (fraction)"}
        for a, k in zip(axs[0], keys):
            a.plot(x if x is not None and len(x) == len(m[k]) else np.arange(len(m[k])), m[k], "o-", ms=3)
            a.set_title(k, fontsize=9)
            a.set_xlabel("training tokens" if "tokens" in m else "training step")
            a.set_ylabel(ylab.get(k, k), fontsize=8)
        if hist is not None:
            a = axs[0][-1]
            lo, st = float(s.get("hist_lo", -10.0)), float(s.get("hist_step", 0.25))
            edges = lo + st * np.arange(len(hist) + 1)
            a.bar(edges[:-1], hist, width=st, align="edge", color="C1")
            a.set_xlabel("log10 firing density (fraction of tokens)")
            a.set_ylabel("latents (count)", fontsize=8)
            a.set_title("density (never fired: %d)" % zero, fontsize=9)
        R.figure("sae", fig, "%s: training metrics and log10 feature density histogram" % name)


DENSE_L0 = 0.10      # L0 above this fraction of d_sae: a dense SAE
DENSE_FEATURES = 0.01  # dense latents above this fraction: too many dense features


def dense_warnings(s):
    """Why an SAE looks dense: L0 above 10% of its width, or more than 1% dense latents (from the
    held-out /metrics/eval when present, else the last training log row)."""
    m, e = s.get("metrics", {}), s.get("eval", {})

    def val(k):
        if e.get(k) is not None:
            return float(e[k])
        return float(m[k][-1]) if k in m and len(m[k]) else None
    out = []
    l0, dense, width = val("l0"), val("dense_fraction"), s.get("d_sae")
    if l0 is not None and width and l0 > DENSE_L0 * float(width):
        out.append("dense codes: L0 %s is above 10%% of its %d latents (%s%%)" % (num(l0), int(width),
                                                                                num(100 * l0 / float(width), 3)))
    if dense is not None and dense > DENSE_FEATURES:
        out.append("%s%% of its latents are dense (fire on more than the dense threshold of the tokens; "
                   "warning above 1%%)" % num(100 * dense, 3))
    return out


def load_sae_evals(R):
    """sae-eval result files (format mergelens.sae_eval) anywhere one level under the run directory."""
    out = []
    for p in sorted(set(glob.glob(os.path.join(R.run, "*", "*.h5")))):
        if fmt_of(p) != "mergelens.sae_eval":
            continue
        with h5py.File(p, "r") as f:
            e = {k: attr(f, k) for k in ("sae", "model", "hook_name", "split", "order", "seed", "context",
                                         "n_windows", "n_targets", "loss_clean", "loss_zero", "loss_spliced",
                                         "ce_recovered")}
            e["path"] = p
            e["domains"] = attr_json(f, "domains", []) or []
            pd = f["per_domain"] if "per_domain" in f else None
            e["per_domain"] = {k: np.asarray(pd[k][()]) for k in pd if isinstance(pd[k], h5py.Dataset)} if pd else {}
        out.append(e)
    return out


def sec_ce_recovered(R, saes):
    evs = load_sae_evals(R)
    if not evs:
        R.note("sae", "no sae-eval file (format mergelens.sae_eval, written by `mergelens sae-eval --out`): "
               "CE loss recovered not shown.")
        return
    body = []
    for e in evs:
        body.append([stem(e["sae"] or e["path"]), stem(e["model"] or ""), e["hook_name"] or "",
                     num(e["loss_clean"]), num(e["loss_zero"]), num(e["loss_spliced"]), num(e["ce_recovered"]),
                     e["n_windows"], tokens_text(e["n_targets"]), "%s (seed %s)" % (e["order"], e["seed"]),
                     os.path.relpath(e["path"], R.run)])
    R.add("sae", "<h3>CE loss recovered</h3><p>loss in nats/token with the MLP activation as is (clean), "
          "zero-ablated (zero) and replaced by the SAE's reconstruction (spliced); CE recovered = "
          "(zero - spliced) / (zero - clean): 1 = the reconstruction loses nothing.</p>")
    R.add("sae", table(["SAE", "model", "hook", "clean loss", "zero-ablated loss", "spliced loss", "CE recovered",
                        "windows", "tokens", "windows drawn", "file"], body))
    doms = sorted({d for e in evs for d in e["domains"]})
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(evs) + 3), 3.4))
    wd = 0.8 / max(1, len(doms) + 1)
    x = np.arange(len(evs))
    ax.bar(x, [e["ce_recovered"] if e["ce_recovered"] is not None else np.nan for e in evs], wd, color="k",
           label="all domains")
    for j, d in enumerate(doms):
        v = []
        for e in evs:
            cr = e["per_domain"].get("ce_recovered")
            v.append(float(cr[e["domains"].index(d)]) if cr is not None and d in e["domains"] else np.nan)
        ax.bar(x + (j + 1) * wd, v, wd, color="C%d" % j, label=d)
    ax.set_xticks(x + wd * len(doms) / 2)
    ax.set_xticklabels([stem(e["sae"] or e["path"]) for e in evs], fontsize=8)
    ax.set_xlabel("SAE")
    ax.set_ylabel("CE loss recovered (fraction)")
    ax.axhline(1.0, ls="--", color="#888", lw=1)
    ax.legend(fontsize=7)
    R.figure("sae", fig, "CE loss recovered per SAE, in total and per domain (1 = the spliced model's loss equals "
             "the clean model's)")


def shade(tok, ids, acts, vmax, center):
    """Tokens as spans, background alpha ~ activation / vmax; the example's own token outlined."""
    out = []
    for j, (t, a) in enumerate(zip(ids, acts)):
        if t < 0:
            continue
        try:
            s = tok.token_text(int(t)) if tok is not None else "<%d>" % t
        except ValueError:
            s = "<%d>" % t
        s = "".join(CTRL.get(c, c) if ord(c) < 32 or ord(c) == 127 else c for c in s)
        alpha = 0.0 if vmax <= 0 else max(0.0, min(1.0, float(a) / vmax))
        out.append('<span class="tk%s" style="background:rgba(255,110,0,%.2f)" title="id %d, act %.3g">%s</span>'
                   % (" c" if j == center else "", alpha, t, float(a), esc(s)))
    return "".join(out)


def feature_card(R, f, fid, label, ncontexts=5):
    tok = R.tokenizer()
    fe = f["features"]
    ctx = int(attr(fe, "ctx_left", 0))
    dens = fe["density"][fid] if "density" in fe else float("nan")
    mx = float(fe["max_act"][fid]) if "max_act" in fe else 0.0
    ids = np.asarray(fe["top_tokens"][fid])
    acts = np.asarray(fe["top_window_acts"][fid])
    rows_ = np.asarray(fe["top_acts"][fid]) if "top_acts" in fe else np.zeros(len(ids))
    vmax = mx if mx > 0 else float(np.max(acts)) if acts.size else 0.0
    lines = []
    for i in range(min(ncontexts, len(ids))):
        if np.all(ids[i] < 0):
            continue
        lines.append('<div class="ctx"><span class="act">%s</span> %s</div>' % (num(rows_[i], 3),
                                                                           shade(tok, ids[i], acts[i], vmax, ctx)))
    if not lines:
        lines.append('<div class="ctx note">no firing on the evaluation rows</div>')
    return ('<div class="card"><div class="fh">%s feature %d &middot; density %s &middot; max %s</div>%s</div>'
            % (esc(label), fid, num(dens, 3), num(mx, 3), "".join(lines)))


def resolve(R, path):
    """A path stored in a file: as given, relative to the run directory, or its base name under acts/."""
    if not path:
        return None
    for c in (path, os.path.join(R.run, path), os.path.join(R.run, "acts", os.path.basename(path))):
        if os.path.isfile(c):
            return c
    return None


def sae_feature_acts(f, x, fid):
    """Activation of latent fid of the SAE file f on rows x (n, d_in), by the encoder of docs/FORMAT.md:
    relu((x - b_dec) W_enc + b_enc) (b_dec subtracted when apply_b_dec_to_input, default 1 except
    anthropic); topk keeps the k largest pre-activations of each row."""
    arch = attr(f, "architecture", "standard")
    sub = int(attr(f, "apply_b_dec_to_input", 0 if arch == "anthropic" else 1))
    W, be, bd = f["W_enc"], np.asarray(f["b_enc"][()], np.float64), np.asarray(f["b_dec"][()], np.float64)
    xin = np.asarray(x, np.float64) - (bd if sub else 0.0)
    if arch == "topk":
        pre = xin @ np.asarray(W[()], np.float64) + be
        k = int(attr(f, "k", 0))
        kth = np.sort(pre, axis=1)[:, -k] if 0 < k < pre.shape[1] else np.full(len(pre), -np.inf)
        v = pre[:, fid]
        return np.where(v >= kth, np.maximum(v, 0.0), 0.0)
    return np.maximum(xin @ np.asarray(W[:, fid], np.float64) + be[fid], 0.0)


def read_rows(path, hook, rows):
    """Activation rows (sorted unique indices) of one hook from an activations file, and their tokens."""
    with h5py.File(path, "r") as f:
        d = f["hooks"][hook]["acts"]
        x = d[rows, :]
        if attr(d, "encoding") == "float16":
            x = np.asarray(x, np.uint16).view(np.float16)
        return np.asarray(x, np.float64), np.asarray(f["tokens"][rows])


def pair_same_tokens(R, ed, fp, fc, pid, cid, ncontexts=5):
    """The parent's top examples of feature pid with the child's feature cid computed on the same tokens
    (the captures of a lineage share their token rows). None when the activation files are missing."""
    pa, ca = resolve(R, ed.get("parent_acts")), resolve(R, ed.get("child_acts"))
    hook = attr(fc, "hook_name", "")
    if pa is None or ca is None or not hook:
        return None
    fe = fp["features"]
    L = int(attr(fe, "ctx_left", 0))
    ids = np.asarray(fe["top_tokens"][pid])[:ncontexts]
    pacts = np.asarray(fe["top_window_acts"][pid])[:ncontexts]
    top = np.asarray(fe["top_rows"][pid])[:ncontexts]
    want = sorted({int(r) - L + j for i, r in enumerate(top) if r >= 0 for j in range(ids.shape[1])
                   if ids[i, j] >= 0})
    if not want:
        return None
    xc, tc = read_rows(ca, hook, want)
    with h5py.File(pa, "r") as g:
        tp = np.asarray(g["tokens"][want])
    if not np.array_equal(tp, tc):
        return '<p class="note">%s and %s hold different tokens on these rows: no same-token view.</p>' % (
            esc(os.path.basename(pa)), esc(os.path.basename(ca)))
    cval = dict(zip(want, sae_feature_acts(fc, xc, cid)))
    tok = R.tokenizer()
    pmax = float(fp["features/max_act"][pid]) if "max_act" in fe else float(np.max(pacts))
    cmax = float(fc["features/max_act"][cid]) if "features/max_act" in fc else 0.0
    cmax = cmax if cmax > 0 else max(1e-12, max(cval.values()))
    lines = []
    for i, r in enumerate(top):
        if r < 0:
            continue
        cacts = np.array([cval.get(int(r) - L + j, 0.0) if ids[i, j] >= 0 else 0.0 for j in range(ids.shape[1])])
        lines.append('<div class="ctx"><span class="act">%s</span> %s</div><div class="ctx"><span class="act">%s'
                     '</span> %s</div>' % (num(pacts[i, L], 3), shade(tok, ids[i], pacts[i], pmax, L),
                                           num(cacts[L], 3), shade(tok, ids[i], cacts, cmax, L)))
    return ('<div class="card"><div class="fh">same tokens: %s feature %d (first line of each pair, stored '
            'activations) and %s feature %d (second line, computed from %s with the SAE\'s encoder) on the '
            "parent feature's top examples</div>%s</div>" % (esc(stem(fp.filename)), pid, esc(stem(fc.filename)),
                                                              cid, esc(os.path.basename(ca)), "".join(lines)))


def find_sae(saes, model, explicit):
    if explicit:
        for n, s in saes.items():
            if stem(explicit) == n:
                return n
    if not model:
        return None
    m = stem(model)
    for n, s in saes.items():
        if n == m or stem(s["model"]) == m:
            return n
    for n in saes:
        if n.startswith(m + "-") or n.startswith(m + "_"):
            return n
    return None


def sec_features(R, saes, tracks):
    usable = {n: s for n, s in saes.items() if s.get("has_features")}
    if not usable:
        R.note("features", "no SAE file with /features (top-activating contexts).")
        return
    if R.tokenizer() is None:
        R.note("features", "tokenizer not found: tokens are shown as ids.")
    else:
        R.note("features", "tokens decoded with %s; orange = activation relative to the feature's maximum, "
               "outlined = the example's own token." % R.tokenizer().path)
    nex = R.args.examples
    rng = np.random.default_rng(0)
    shown = 0
    for t in tracks:
        for ed in t["edges"]:
            pa = find_sae(usable, ed["parent"], ed["parent_sae"])
            ch = find_sae(usable, ed["child"], ed["child_sae"])
            if pa is None or ch is None or ed["parent_status"] is None or ed["child_status"] is None:
                R.note("features", "edge %s: no SAE file with features found for %s" %
                       (ed["name"], " and ".join(x for x, y in ((ed["parent"], pa), (ed["child"], ch)) if y is None)
                        or "its statuses"))
                continue
            R.add("features", "<h3>edge %s: %s &rarr; %s</h3>" % (esc(ed["name"]), esc(ed["parent"]),
                                                                   esc(ed["child"])))
            with h5py.File(usable[pa]["path"], "r") as fp, h5py.File(usable[ch]["path"], "r") as fc:
                ps, cs = ed["parent_status"], ed["child_status"]
                for st, side, f, other in (("persist", ps, fp, fc), ("disappear", ps, fp, None),
                                           ("emerge", cs, fc, None)):
                    code = {"persist": 1, "disappear": 2, "emerge": 3}[st]
                    ids = np.flatnonzero(side == code)
                    ids = ids[ids < f["features/top_tokens"].shape[0]]
                    pick = np.sort(rng.choice(ids, size=min(nex, len(ids)), replace=False)) if len(ids) else []
                    R.add("features", '<h4 class="%s">%s (%d features, %d shown)</h4>' % (st, st, len(ids), len(pick)))
                    for fid in pick:
                        card = feature_card(R, f, int(fid), "%s %s" % (stem(f.filename), st))
                        if other is not None and ed["parent_partner"] is not None:
                            partner = int(ed["parent_partner"][fid])
                            if 0 <= partner < other["features/top_tokens"].shape[0]:
                                same = pair_same_tokens(R, ed, f, other, int(fid), partner)
                                if same is None:
                                    same = ('<p class="note">activation files of the edge not found: each '
                                            "feature's own top examples.</p>")
                                card = '%s<div class="pair">%s%s<div class="sc">r = %s</div></div>' % (
                                    same, card, feature_card(R, other, partner, "%s partner" % stem(other.filename)),
                                    num(ed["parent_score"][fid], 3))
                        R.add("features", card)
                        shown += 1
    for name, s in usable.items():
        page = "features_%s.html" % "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        with h5py.File(s["path"], "r") as f:
            fe = f["features"]
            cnt = np.asarray(fe["count"][()]) if "count" in fe else np.ones(fe["top_tokens"].shape[0])
            live = np.flatnonzero(cnt > 0)
            order = live[np.argsort(-(np.asarray(fe["max_act"][()])[live] if "max_act" in fe else cnt[live]),
                                    kind="stable")][:R.args.features]
            cards = [feature_card(R, f, int(i), name) for i in order]
        with open(os.path.join(R.out, page), "w", encoding="utf-8") as o:
            o.write(PAGE_HEAD % ("features of " + esc(name)) + "<h1>%s: %d of %d live features, by max activation</h1>"
                    % (esc(name), len(order), len(live)) + '<p><a href="index.html">back</a></p>' + "\n".join(cards)
                    + "</body></html>\n")
        R.pages.append(page)
        R.add("features", '<p>browse: <a href="%s">%s</a> (%d features)</p>' % (page, esc(name), len(order)))
    if not tracks:
        R.note("features", "no tracking file: persisting / emerging / disappearing examples need one.")


# ---------------------------------------------------------------- PEFT / weight-space tables
def dataset_table(g):
    """Equal-length 1-D datasets of a group as columns (attr `columns` or `rows` orders/labels)."""
    cols = [(k, g[k]) for k in g if isinstance(g[k], h5py.Dataset) and g[k].ndim == 1]
    if not cols:
        return None
    n = max(len(d) for _, d in cols)
    cols = [(k, d) for k, d in cols if len(d) == n]
    cols.sort(key=lambda kd: kd[1].dtype.kind not in "SOU")  # label (string) columns first
    vals = []
    for k, d in cols:
        v = d[()]
        vals.append([astr(x) if isinstance(x, (bytes, str)) else num(x) for x in v])
    return table([k for k, _ in cols], [[v[i] for v in vals] for i in range(n)])


def sec_tables(R):
    files = []
    for p in sorted(glob.glob(os.path.join(R.run, "*", "*.h5")) + glob.glob(os.path.join(R.run, "*.h5"))):
        fm = fmt_of(p) or ""
        if any(w in fm for w in ("peft", "weight", "portab", "weightspace")):
            files.append((p, fm))
    if not files:
        R.note("tables", "no PEFT-portability or weight-space results in the run (stage not run).")
        return
    for p, fm in files:
        with h5py.File(p, "r") as f:
            R.add("tables", "<h3>%s (%s)</h3>" % (esc(os.path.relpath(p, R.run)), esc(fm)))
            groups = [("/", f)] + [(k, f[k]) for k in f if isinstance(f[k], h5py.Group) and k != "profile"]
            for k, g in groups:
                t = dataset_table(g)
                if t:
                    R.add("tables", "<h4>%s</h4>%s" % (esc(k), t))
                for dk in g:
                    d = g[dk]
                    if isinstance(d, h5py.Dataset) and d.ndim == 2 and d.dtype.kind == "f" and max(d.shape) <= 64:
                        lab = attr_json(d, "labels", None) or attr_json(f, "models", None)
                        fig, ax = plt.subplots(figsize=(4.5, 3.8))
                        im = ax.imshow(d[()], cmap="viridis")
                        fig.colorbar(im, ax=ax).set_label("%s (%s)" % (dk, attr(d, "units", "as stored")))
                        ax.set_xlabel("column (model)")
                        ax.set_ylabel("row (model)")
                        if lab and len(lab) == d.shape[0] == d.shape[1]:
                            ax.set_xticks(range(len(lab)))
                            ax.set_xticklabels(lab, rotation=60, fontsize=7)
                            ax.set_yticks(range(len(lab)))
                            ax.set_yticklabels(lab, fontsize=7)
                        R.figure("tables", fig, "%s %s/%s" % (os.path.basename(p), k, dk))


# ---------------------------------------------------------------- weight-space regions (mergelens region)
def sec_region(R):
    """Gueta et al. regions: cosine heat-map ordered by cluster, interpolation / extrapolation curves,
    random convex combinations and the centroid table (region/regions.h5, region/centroid.h5)."""
    path = os.path.join(R.run, "region", "regions.h5")
    R.add("tables", "<h3>Weight-space regions (region/regions.h5)</h3>")
    with h5py.File(path, "r") as f:
        cos = np.asarray(f["cosine"][()])
        labels = attr_json(f, "labels", None) or ["m%d" % i for i in range(cos.shape[0])]
        order = np.asarray(f["cluster/order"][()]) if "cluster/order" in f else np.arange(cos.shape[0])
        assign = np.asarray(f["cluster/assign"][()]) if "cluster/assign" in f else np.zeros(cos.shape[0], int)
        acc = attr(f["cluster"], "accuracy", float("nan")) if "cluster" in f else float("nan")
        kind = np.asarray(f["points/kind"][()])
        pair = np.asarray(f["points/pair"][()])
        alpha = np.asarray(f["points/alpha"][()])
        group = np.asarray(f["points/group"][()])
        loss = np.asarray(f["points/loss"][()]) if "points/loss" in f else None
        pacc = np.asarray(f["points/accuracy"][()]) if "points/accuracy" in f else None
        doms = attr_json(f, "domains", None) or []
        lnames = attr_json(f, "label_names", None) or []
        cin, cout = attr(f, "cos_within", float("nan")), attr(f, "cos_across", float("nan"))
        din, dout = attr(f, "distance_within", float("nan")), attr(f, "distance_across", float("nan"))
    R.add("tables", table(["clusters", "accuracy vs domains", "cos within", "cos across", "distance within",
                           "distance across"],
                          [[len(set(assign.tolist())), num(acc), num(cin), num(cout), num(din), num(dout)]]))
    names = ["%s#%d (c%d)" % (labels[i], i, assign[i]) for i in order]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    im = ax.imshow(cos[np.ix_(order, order)], cmap="viridis", vmin=min(0.0, float(cos.min())), vmax=1)
    fig.colorbar(im, ax=ax).set_label("cosine similarity (unitless)")
    ax.set_xlabel("task vector (model#index, cluster)")
    ax.set_ylabel("task vector (model#index, cluster)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=70, fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    R.figure("tables", fig, "cosine similarity of the task vectors (fine-tune - base), ordered by spectral cluster")
    if loss is None or not len(doms):
        return
    lines = sorted({(int(a), int(b)) for k, (a, b) in zip(kind, pair) if k == 2})
    if lines:
        fig, axs = plt.subplots(1, len(lines), figsize=(3.6 * len(lines), 3.2), squeeze=False)
        for ax, (a, b) in zip(axs[0], lines):
            sel = (kind == 2) & (pair[:, 0] == a) & (pair[:, 1] == b)
            o = np.argsort(alpha[sel])
            for d, dn in enumerate(doms):
                ax.plot(alpha[sel][o], loss[sel][o, d], "o-", ms=3, label=dn)
            ax.axvspan(0, 1, color="#eee", zorder=0)
            ax.set_title("%s#%d -> %s#%d" % (labels[a], a, labels[b], b), fontsize=9)
            ax.set_xlabel("alpha ((1-alpha) x_i + alpha x_j)")
        axs[0][0].set_ylabel("validation loss (nats/token)")
        axs[0][0].legend(fontsize=7)
        R.figure("tables", fig, "interpolation (shaded, alpha in [0, 1]) and extrapolation between model pairs: "
                 "loss per domain")
    rows = []
    models = kind == 1
    rows.append(["the fine-tuned models (mean)"] + [num(v) for v in loss[models].mean(0)] +
                [num(v) for v in pacc[models].mean(0)])
    rows.append(["the base"] + [num(v) for v in loss[kind == 0].mean(0)] + [num(v) for v in pacc[kind == 0].mean(0)])
    for g in sorted(set(group[kind == 3].tolist())):
        sel = (kind == 3) & (group == g)
        gn = lnames[g] if 0 <= g < len(lnames) else "all models"
        rows.append(["random convex (%s, %d)" % (gn, sel.sum())] + [num(v) for v in loss[sel].mean(0)] +
                    [num(v) for v in pacc[sel].mean(0)])
    R.add("tables", "<h4>random convex combinations (Dirichlet weights): mean loss and accuracy</h4>" +
          table(["points"] + ["%s loss" % d for d in doms] + ["%s acc" % d for d in doms], rows))
    cpath = os.path.join(R.run, "region", "centroid.h5")
    if os.path.isfile(cpath):
        with h5py.File(cpath, "r") as f:
            cd = attr_json(f, "domains", None) or []
            cols = ["loss_centroid", "loss_base", "loss_diff", "accuracy_centroid", "accuracy_base", "accuracy_diff"]
            vals = {c: np.asarray(f[c][()]) for c in cols if c in f}
        R.add("tables", "<h4>centroid experiment: fine-tune from the centroid of the other domains' models vs "
              "from the base (same budget); diff = centroid - base</h4>" +
              table(["held-out domain"] + cols, [[dn] + [num(vals[c][i]) for c in cols if c in vals]
                                                  for i, dn in enumerate(cd)]))


# ---------------------------------------------------------------- PEFT portability (peft/*.h5)
def sec_peft(R):
    """Sabry & Belz portability: per method, host pair and condition, the mean (+- std over seeds)
    loss and accuracy zero-shot and after the continued training (format mergelens.peft)."""
    files = [p for p in h5files(R.run, "peft") if fmt_of(p) == "mergelens.peft"]
    for p in files:
        with h5py.File(p, "r") as f:
            res = f["results"]
            cols = {k: np.asarray(res[k][()]) for k in ("adapter", "method", "target", "condition", "seed", "step")}
            loss, acc = np.atleast_2d(res["loss"][()]), np.atleast_2d(res["accuracy"][()])
            methods, conds = attr_json(f, "methods", []), attr_json(f, "conditions", [])
            hosts, sources = attr_json(f, "hosts", []), attr_json(f, "sources", [])
            doms = attr_json(f, "domains", []) or ["domain%d" % d for d in range(loss.shape[1])]
            hl = np.atleast_2d(f["hosts/loss"][()])
            steps = attr(f, "steps", 0)
        hdr = ["method", "source -> target", "condition", "seeds"]
        for d in doms:
            hdr += ["%s loss @0" % d, "%s loss @%d" % (d, steps), "%s acc @0" % d, "%s acc @%d" % (d, steps)]
        hdr += ["target host alone (%s loss)" % doms[0]]
        body, keys = [], []
        for a, m, t, c in zip(cols["adapter"], cols["method"], cols["target"], cols["condition"]):
            if (a, m, t, c) not in keys:
                keys.append((a, m, t, c))
        for a, m, t, c in keys:
            sel = (cols["adapter"] == a) & (cols["target"] == t) & (cols["condition"] == c)
            z, e = sel & (cols["step"] == 0), sel & (cols["step"] != 0)

            def ms(v):
                return "%s ± %s" % (num(np.mean(v)), num(np.std(v), 2)) if len(v) > 1 else num(v[0])
            row = [methods[m] if m < len(methods) else m,
                   "%s -> %s" % (stem(sources[a]) if a < len(sources) else a, stem(hosts[t]) if t < len(hosts) else t),
                   conds[c] if c < len(conds) else c, int(z.sum())]
            for d in range(loss.shape[1]):
                row += [ms(loss[z, d]), ms(loss[e, d]), ms(acc[z, d]), ms(acc[e, d])]
            row.append(num(hl[t, 0]))
            body.append(row)
        R.add("tables", "<h3>PEFT portability: %s</h3>%s" % (esc(os.path.relpath(p, R.run)), table(hdr, body)))
        # zero-shot and continued loss on the first domain, one panel per method
        ms_ = sorted(set(cols["method"].tolist()))
        fig, ax = plt.subplots(1, len(ms_), figsize=(5 * len(ms_), 3.4), squeeze=False)
        for k, m in enumerate(ms_):
            pairs = sorted(set((int(a), int(t)) for a, t, mm in zip(cols["adapter"], cols["target"], cols["method"])
                               if mm == m))
            x = np.arange(len(pairs))
            for ci, cname in enumerate(conds):
                for si, (st, hatch) in enumerate(((0, ""), (steps, "//"))):
                    v = []
                    for a, t in pairs:
                        sel = ((cols["adapter"] == a) & (cols["target"] == t) & (cols["condition"] == ci) &
                               (cols["step"] == st))
                        v.append(loss[sel, 0].mean() if sel.any() else np.nan)
                    ax[0, k].bar(x + (2 * ci + si) * 0.13, v, 0.13, color="C%d" % ci, hatch=hatch,
                                 label="%s @%d" % (cname, st))
            ax[0, k].set_xticks(x + 0.33)
            ax[0, k].set_xticklabels(["%s->%s" % (stem(sources[a]), stem(hosts[t])) for a, t in pairs], fontsize=7)
            ax[0, k].set_title("%s: %s loss" % (methods[m] if m < len(methods) else m, doms[0]))
            ax[0, k].set_xlabel("adapter source -> target host")
            ax[0, k].set_ylabel("%s loss (nats/token)" % doms[0])
            lo = np.nanmin(loss[:, 0])
            ax[0, k].set_ylim(lo - 0.05 * abs(lo), None)
        ax[0, 0].legend(fontsize=6)
        R.figure("tables", fig, "%s: mean loss over seeds, zero-shot (plain) and after %d steps (hatched)"
                 % (os.path.basename(p), steps))


# ---------------------------------------------------------------- page
PAGE_HEAD = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>%s</title><style>
body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}
table.t{border-collapse:collapse;font-size:13px;margin:.5em 0;display:block;max-width:100%%;overflow-x:auto}
table.t td.wrap{text-align:left;white-space:normal;overflow-wrap:anywhere;word-break:break-all;min-width:20em}
.warn{color:#a00;font-weight:bold}table.t td,table.t th{border:1px solid #ccc;
padding:2px 6px;text-align:right}table.t th{background:#eee}table.t td:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%%;height:auto}.note{color:#777;font-style:italic}
.card{border:1px solid #ddd;margin:6px 0;padding:4px;font-size:13px}.fh{font-weight:bold;margin-bottom:3px}
.ctx{font-family:monospace;white-space:pre-wrap;margin:1px 0}.act{color:#888;display:inline-block;width:4em}
.tk{border-radius:2px}.tk.c{outline:1px solid #c00}.pair{display:flex;gap:8px;align-items:flex-start}
.pair .card{flex:1}.sc{min-width:5em;padding-top:6px}h4.persist{color:#4c72b0}h4.disappear{color:#dd8452}
h4.emerge{color:#55a868}
</style></head><body>
"""


def build(run, out, args):
    os.makedirs(out, exist_ok=True)
    for old in glob.glob(os.path.join(out, "fig*.png")) + glob.glob(os.path.join(out, "features_*.html")):
        os.remove(old)
    R = Report(run, out, args)
    failures = []

    def guard(sec, fn, *a):
        try:
            return fn(*a)
        except Exception as e:  # a malformed file must not hide the other sections
            if args.strict:
                raise
            failures.append(sec)
            R.add(sec, '<p class="note">section failed: %s</p><pre>%s</pre>'
                  % (esc(e), esc(traceback.format_exc(limit=3))))
            return None

    guard("provenance", sec_provenance, R)
    models = guard("training", load_models, R) or {}
    guard("training", sec_training, R, models)
    guard("evaluation", sec_evaluation, R, models)
    guard("sweeps", sec_sweeps, R, models)
    guard("sweeps", sec_track_sweeps, R)
    tracks = guard("flow", load_tracking, R) or []
    guard("flow", sec_flow, R, tracks)
    guard("flow", sec_calibration, R, tracks)
    guard("correlations", sec_correlations, R, tracks)
    saes = guard("sae", load_saes, R) or {}
    guard("sae", sec_sae, R, saes)
    guard("features", sec_features, R, saes, tracks)
    guard("tables", sec_peft, R)
    guard("tables", sec_tables, R)
    if os.path.isfile(os.path.join(run, "region", "regions.h5")):
        guard("tables", sec_region, R)
    body = [PAGE_HEAD % "mergelens report", "<h1>mergelens report: %s</h1>" % esc(os.path.abspath(run)),
            "<p>" + " &middot; ".join('<a href="#%s">%s</a>' % (k, esc(t)) for k, t in SECTIONS) + "</p>"]
    for k, t in SECTIONS:
        body.append('<section id="%s"><h2>%s</h2>' % (k, esc(t)))
        body += R.parts[k] or ['<p class="note">nothing to show.</p>']
        body.append("</section>")
    body.append("</body></html>\n")
    index = os.path.join(out, "index.html")
    tmp = index + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(body))
    os.replace(tmp, index)
    return index, R.nfig, failures


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write RUN_DIR/report/index.html from a mergelens run directory.")
    ap.add_argument("run_dir")
    ap.add_argument("--out", help="report directory (default RUN_DIR/report)")
    ap.add_argument("--examples", type=int, default=6, help="feature examples per status and edge (6)")
    ap.add_argument("--features", type=int, default=200, help="features per SAE on the browse pages (200)")
    ap.add_argument("--strict", action="store_true", help="fail on a malformed file instead of noting it")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.run_dir):
        print("report.py: %s: not a directory" % args.run_dir, file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.run_dir, "report")
    index, nfig, failures = build(args.run_dir, out, args)
    for s in failures:
        print("report.py: warning: section '%s' failed (see the page)" % s, file=sys.stderr)
    print("report: %s (%d figures)" % (index, nfig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
