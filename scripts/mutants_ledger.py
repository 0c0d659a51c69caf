#!/usr/bin/env python3
"""The mutation ledger: every mutant's verdict, kept across runs, so the full scope's figure
can be assembled from runs done in different sittings (a full pass is ~11 hours on the 2-core
machine; a sitting rarely has more than two).

A verdict stays valid as long as the file it was found in is byte-for-byte the same: rows are
keyed by the file's git blob and by cargo-mutants' mutant name (which carries line and column).
Editing a file retires its rows; the tally then counts its mutants as undecided again.

  mutants_ledger.py record OUTDIR PASS BLOBS LEDGER [OUTCOMES]
      append the verdicts of one cargo-mutants run (OUTDIR/mutants.out/{caught,missed,timeout,
      unviable}.txt) as pass PASS (`sim`: the simulation alone; `tokio`: the rest of the suite),
      attributing each to its file's blob from BLOBS (`git ls-tree -r` of src/ as the run saw it);
      OUTCOMES (comma-separated) keeps only those: a run of part of the suite (the unit tests
      alone) is the whole suite's verdict where it caught a mutant, and no verdict where not
  mutants_ledger.py tally LIST_JSON BLOBS LEDGER [UNDECIDED_OUT]
      the scope (`cargo mutants --list --json`) against the ledger: per file and in total, how
      many are decided and the figures over the decided ones; writes the undecided mutants'
      names to UNDECIDED_OUT (and pass 1's survivors with no pass-2 verdict to UNDECIDED_OUT.tokio)

A mutant pass 2 finds unviable (the production build does not compile with it) is unviable
whatever pass 1 said: pass 1 builds the simulation, which leaves out code under
cfg(not(madsim)), so a mutant there compiles and "survives" a simulation that never runs it.

Outcomes: a pass-1 `timeout` is a hang the mutant caused (the suite finishes in well under the
timeout on the tree without it), so it counts as caught, as in scripts/mutants.sh; a pass-2
timeout is not counted (the tokio suite's own length can cause one) and stays undecided.
"""

import collections
import datetime
import json
import os
import sys

OUTCOMES = ("caught", "missed", "timeout", "unviable")
HEADER = "blob\tpass\toutcome\tname\tcommit\tdate\n"


def die(msg):
    print(f"mutants_ledger: {msg}", file=sys.stderr)
    sys.exit(2)


def read_blobs(path):
    """`git ls-tree -r` lines: mode type blob\tpath."""
    blobs = {}
    with open(path) as f:
        for line in f:
            meta, _, file = line.rstrip("\n").partition("\t")
            parts = meta.split()
            if len(parts) == 3 and parts[1] == "blob":
                blobs[file] = parts[2]
    if not blobs:
        die(f"{path}: no blobs (was src/ clean when the run started?)")
    return blobs


def file_of(name):
    # "src/x.rs:12:5: replace ..."
    return name.split(":", 1)[0]


def read_ledger(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        head = f.readline()
        if head != HEADER:
            die(f"{path}: unexpected header {head!r}")
        for n, line in enumerate(f, 2):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 6:
                die(f"{path}:{n}: expected 6 columns, got {len(cols)}")
            rows.append(dict(zip(("blob", "pass", "outcome", "name", "commit", "date"), cols)))
    return rows


def record(outdir, pass_, blobs_path, ledger, only=None):
    if pass_ not in ("sim", "tokio"):
        die(f"pass must be sim or tokio, not {pass_!r}")
    kept = OUTCOMES if only is None else tuple(only.split(","))
    for k in kept:
        if k not in OUTCOMES:
            die(f"unknown outcome {k!r} (one of {', '.join(OUTCOMES)})")
    blobs = read_blobs(blobs_path)
    commit = os.environ.get("MUTANTS_COMMIT", "")
    today = datetime.date.today().isoformat()
    # A later verdict of the same pass replaces an earlier one (the tally reads the last row):
    # pass 2 reruns pass 1's survivors, and a survivor is rerun once the harness has an oracle
    # for it. A rerun with the same outcome adds nothing.
    latest = {}
    for r in read_ledger(ledger):
        latest[(r["blob"], r["pass"], r["name"])] = r["outcome"]
    new = []
    for outcome in kept:
        path = os.path.join(outdir, "mutants.out", f"{outcome}.txt")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for name in (l.rstrip("\n") for l in f):
                if not name:
                    continue
                blob = blobs.get(file_of(name))
                if blob is None:
                    die(f"{name}: its file is not in {blobs_path}")
                if latest.get((blob, pass_, name)) == outcome:
                    continue
                if "\t" in name or "\n" in name:
                    die(f"{name!r}: a tab in a mutant name")
                new.append(f"{blob}\t{pass_}\t{outcome}\t{name}\t{commit}\t{today}\n")
    fresh = not os.path.exists(ledger)
    with open(ledger, "a") as f:
        if fresh:
            f.write(HEADER)
        f.writelines(new)
    print(f"mutants_ledger: {len(new)} {pass_} verdicts recorded in {ledger}")


def tally(list_json, blobs_path, ledger, undecided_out=None):
    blobs = read_blobs(blobs_path)
    with open(list_json) as f:
        scope = [m["name"] for m in json.load(f)]
    verdict = {}
    for r in read_ledger(ledger):
        verdict[(r["blob"], r["pass"], r["name"])] = r["outcome"]
    per_file = collections.OrderedDict()
    undecided, tokio_undecided = [], []
    for name in sorted(scope, key=lambda n: (file_of(n), n)):
        file = file_of(name)
        blob = blobs.get(file)
        c = per_file.setdefault(file, collections.Counter())
        c["scope"] += 1
        sim = verdict.get((blob, "sim", name))
        if sim is None:
            c["undecided"] += 1
            undecided.append(name)
            continue
        # Unviable in either build: code under cfg(not(madsim)) is not compiled by the
        # simulation (any mutant of it "passes"), and a mutant production cannot be built
        # with is no mutant of the product.
        if sim == "unviable" or verdict.get((blob, "tokio", name)) == "unviable":
            c["unviable"] += 1
            continue
        c["viable"] += 1
        if sim in ("caught", "timeout"):
            c["sim"] += 1
            c["all"] += 1
            continue
        tokio = verdict.get((blob, "tokio", name))
        if tokio == "caught":
            c["all"] += 1
        elif tokio is None or tokio == "timeout":
            c["tokio_undecided"] += 1
            tokio_undecided.append(name)
    total = collections.Counter()
    print(f"{'file':<30} {'scope':>5} {'undec':>5} {'unvia':>5} {'viable':>6} {'sim':>4} "
          f"{'sim%':>5} {'+p2':>4} {'all%':>5} {'p2 to do':>8}")

    def line(label, c):
        v = c["viable"]
        pct = lambda k: f"{100 * c[k] / v:.0f}%" if v else "-"
        print(f"{label:<30} {c['scope']:>5} {c['undecided']:>5} {c['unviable']:>5} {v:>6} "
              f"{c['sim']:>4} {pct('sim'):>5} {c['all']:>4} {pct('all'):>5} "
              f"{c['tokio_undecided']:>8}")

    for file, c in per_file.items():
        line(file, c)
        total.update(c)
    line("total", total)
    decided = total["scope"] - total["undecided"]
    print(f"decided {decided} of {total['scope']} mutants in scope "
          f"({100 * decided / max(total['scope'], 1):.0f}%); the percentages are over the decided "
          f"viable ones, and 'all%' counts pass 2 only where it ran")
    if undecided_out:
        with open(undecided_out, "w") as f:
            f.writelines(n + "\n" for n in undecided)
        with open(undecided_out + ".tokio", "w") as f:
            f.writelines(n + "\n" for n in tokio_undecided)


def main(argv):
    if len(argv) >= 2 and argv[1] == "record" and len(argv) in (6, 7):
        record(*argv[2:])
    elif len(argv) >= 2 and argv[1] == "tally" and len(argv) in (5, 6):
        tally(*argv[2:])
    else:
        die("usage: see the doc comment at the top of scripts/mutants_ledger.py")


if __name__ == "__main__":
    main(sys.argv)
