"""Throughput and memory of `prepare` (translate none) on generated calls in the seed CSV shape.

    .venv/bin/python benchmarks/prepare_throughput.py                 # 1,000,000 calls
    .venv/bin/python benchmarks/prepare_throughput.py --calls 100000,1000000 --workdir /tmp/bench  # reuses the files

Generates the CSV (Portuguese-like calls of 6-12 messages, some rows mojibaked or carrying HTML entities,
consecutive same-speaker turns, duplicate transcripts and a few bad rows; the other export columns present
but short) into a temporary folder, then runs, each in a fresh child process so that generation is not
measured: calltune's prepare (ingest with repair, merge, causal split, dedupe and grouped split, writing
the splits), and the seed system's own pairing (pandas read_csv + iterrows + ast.literal_eval, all in
memory) on a slice. Prints calls/s and the peak RSS of each (prepare: its process plus its largest parser
process, an upper bound of what it held at once), and the ratio.
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER = ["", "organization_id", "transcription", "meeting_type", "overview", "createdAt", "positive", "character",
          "date", "user_id", "updatedAt", "meeting_template_id", "link", "id", "feedbacks", "duration", "negative",
          "meeting_id", "duration_s", "grade"]
NAMES = ["Beatriz Almeida", "Ana Paula Ribeiro", "João Pereira", "Márcia Conceição", "Luís Gonçalves", "Sônia Araújo",
         "Cláudio Simões", "Fernanda Lima", "Otávio Brandão", "Inês Magalhães"]
SELLERS = ["Gabriel", "Willian", "Daniel", "Letícia", "André", "Célia"]
MEETINGS = ["FirstContact", "FollowUp", "Closing", "Objection"]
SELLER_LINES = [
    "Bom dia {name}, aqui quem fala é o {seller} da IQI Investimentos, tudo bem com você?",
    "Entrei em contato porque você interagiu com nosso material sobre fundos imobiliários.",
    "Você já investe hoje? Como escolheu as aplicações que tem?",
    "Entendo perfeitamente, a segurança é fundamental nessa decisão.",
    "Qual é a importância de ter liquidez para você neste momento?",
    "Posso te mostrar uma simulação com rentabilidade de {pct}% ao ano, sem custo nenhum.",
    "Que tal marcarmos uma reunião na {day} às {hour} horas com o nosso assessor?",
    "O preço da assessoria é zero para você, a gente é remunerado pelas gestoras.",
    "Faz sentido pra você diversificar um pouco além dos imóveis?",
    "Perfeito, vou te mandar o convite por e-mail e pelo WhatsApp.",
]
CUSTOMER_LINES = [
    "Olha, na verdade eu não lembro de ter me cadastrado em nada.",
    "Prefiro investir diretamente em imóveis, gosto de coisas tangíveis.",
    "Estou bastante ocupada agora, você pode ser rápido?",
    "Já tive perdas com ações de empresas emergentes e fiquei receosa.",
    "Quanto custa isso? Eu não quero pagar taxa de administração alta.",
    "Pode ser na {day}, mas só depois das {hour} horas.",
    "Não sei se faz sentido para mim, a minha prioridade é a segurança.",
    "Hum, e qual é a rentabilidade líquida? {pct}% me parece pouco.",
    "Tudo bem, pode mandar o material que eu dou uma olhada.",
    "Desculpa, não tenho interesse. Obrigada e até logo.",
    "Meu marido cuida disso, preciso conversar com ele antes.",
    "Sinceramente, eu não gosto de falar de dinheiro por telefone.",
]
DAYS = ["segunda", "terça", "quarta", "quinta", "sexta"]


def _fill(line: str, rng: random.Random, name: str, seller: str) -> str:
    return line.format(name=name.split()[0], seller=seller, pct=rng.randint(5, 15), day=rng.choice(DAYS),
                       hour=rng.randint(8, 18))


def generate(path: Path, n: int, seed: int = 0) -> None:
    """n rows in the seed export's shape: ~15% mojibaked, ~5% with &#39;, ~1% duplicate transcripts, ~0.4% bad;
    one turn in ten is followed by another of the same speaker."""
    rng = random.Random(seed)
    previous = None
    with open(path, "w", encoding="utf-8-sig", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(HEADER)
        for i in range(n):
            name, seller = rng.choice(NAMES), rng.choice(SELLERS)
            messages = [{"message": f"Alô, aqui é a {name}, quem fala?", "role": "bot"}]
            role = "user"
            for _ in range(rng.randint(5, 11)):
                pool = SELLER_LINES if role == "user" else CUSTOMER_LINES
                text = " ".join(_fill(rng.choice(pool), rng, name, seller) for _ in range(rng.randint(1, 2)))
                messages.append({"message": text, "role": role})
                if rng.random() > 0.1:  # else the same speaker goes on: a turn to merge
                    role = "bot" if role == "user" else "user"
            dice = rng.random()
            if dice < 0.05:
                messages[-1]["message"] = messages[-1]["message"].replace("Obrigada", "D&#39;accord, obrigada")
                messages[-1]["message"] += " It&#39;s ok."
            transcription = repr(messages)
            if previous and dice > 0.99:
                transcription = previous  # an exact duplicate call under another id
            elif dice < 0.002:
                transcription = transcription[:-7]  # cut short: unparseable
            elif dice < 0.004:
                transcription = transcription.replace("'bot'", "'agent'")
            previous = transcription
            row = [str(i), "7", transcription, rng.choice(MEETINGS),
                   "{'title': 'Avaliação Final', 'grade': '4'}", "2024-09-18T12:00:58.050Z", "{'summary': 'Bom.'}",
                   name, "18-09-2024", "49", "2024-09-18T12:00:58.050Z", "10", f"https://x.test/{i}.wav",
                   str(100000 + i), "[]", "0:01:00", "{'summary': 'Ruim.'}", str(100000 + i), "60", "4"]
            if 0.05 <= dice < 0.2:  # the export's fault: UTF-8 read as Latin-1, the whole row
                row = [v.encode("utf-8").decode("latin-1") for v in row]
            out.writerow(row)


def run_prepare(csv_path: str, out_dir: str) -> dict:
    from calltune.config import load_config
    from calltune.data.prepare import prepare

    cfg = load_config(overrides=["translate.backend=none"])
    start = time.perf_counter()
    report = prepare(csv_path, out_dir, cfg)
    seconds = time.perf_counter() - start
    return {"calls": report["calls"], "rows": report["rows"], "seconds": seconds, "report": report}


def run_seed(csv_path: str, n: int) -> dict:
    """The seed system's pairing: the whole CSV in a DataFrame, iterrows, pairs kept in memory (reversed)."""
    import pandas as pd

    start = time.perf_counter()
    df = pd.read_csv(csv_path, nrows=n)
    rows, calls = [], 0
    for _, record in df.iterrows():
        try:
            messages = ast.literal_eval(record["transcription"])
        except (ValueError, SyntaxError):
            continue
        calls += 1
        for prev, cur in zip(messages, messages[1:]):
            if cur["role"] == "user" and prev["role"] == "bot":
                rows.append({"contents": [{"role": "user", "parts": [{"text": cur["message"]}]},
                                          {"role": "model", "parts": [{"text": prev["message"]}]}]})
    with open(Path(csv_path).with_suffix(".seed.jsonl"), "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"calls": calls, "rows": n, "seconds": time.perf_counter() - start}


def _child(argv: list[str]) -> None:
    kind, csv_path, arg = argv
    result = run_prepare(csv_path, arg) if kind == "prepare" else run_seed(csv_path, int(arg))
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result["rss_self_mb"], result["rss_children_mb"] = me.ru_maxrss / 1024, kids.ru_maxrss / 1024
    result["cpu_s"] = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    print(json.dumps(result))


def measure(kind: str, csv_path: Path, arg: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "_child", kind, str(csv_path), arg],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{kind} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        return _child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", default="1000000", help="comma-separated call counts to run prepare on")
    ap.add_argument("--baseline-calls", type=int, default=100_000, help="calls for the seed pairing baseline")
    ap.add_argument("--workdir", type=Path, help="keep the generated files here and reuse them on the next run "
                    "(default: a temporary folder, removed at the end)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.calls.split(",")]
    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="calltune-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results = []
    for n in sizes:
        csv_path = tmp / f"calls_{n}.csv"
        if not csv_path.exists():
            t = time.perf_counter()
            generate(csv_path.with_suffix(".part"), n)
            csv_path.with_suffix(".part").rename(csv_path)  # a file cut short is never reused
            print(f"generated {n:,} calls ({csv_path.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - t:.0f}s",
                  flush=True)
        r = measure("prepare", csv_path, str(tmp / f"out_{n}"))
        rep = r["report"]
        rate = r["calls"] / r["seconds"]
        print(f"prepare  {n:>9,} rows: {rate:>9,.0f} calls/s ({r['seconds']:.1f}s wall, {r['cpu_s'] / r['calls'] * 1e6:.0f} "
              f"CPU-µs/call, {rep['workers']} parser processes), peak RSS {r['rss_self_mb']:,.0f} MB + parser "
              f"{r['rss_children_mb']:,.0f} MB | calls {rep['calls']:,} examples {rep['examples']:,} train/val/test "
              f"{rep['train']}/{rep['validation']}/{rep['test']} quarantined {rep['quarantined']} overlap "
              f"{rep['overlap_calls']} duplicates {rep['duplicates_dropped']} held calls <= {rep['sample']['max_held_calls']}",
              flush=True)
        results.append((n, rate, r["cpu_s"] / r["calls"]))
    n_base = min(args.baseline_calls, sizes[-1])
    base = measure("seed", tmp / f"calls_{sizes[-1]}.csv", str(n_base))
    base_rate = base["calls"] / base["seconds"]
    print(f"seed     {n_base:>9,} rows: {base_rate:>9,.0f} calls/s ({base['seconds']:.1f}s wall, "
          f"{base['cpu_s'] / base['calls'] * 1e6:.0f} CPU-µs/call), peak RSS {base['rss_self_mb']:,.0f} MB "
          f"(pandas iterrows + ast.literal_eval, reversed pairing)")
    base_cpu = base["cpu_s"] / base["calls"]
    for n, rate, cpu in results:
        print(f"ratio at {n:,} calls: {rate / base_rate:.1f}x the seed's calls/s; {base_cpu / cpu:.1f}x less CPU per call")
    print(f"load average (1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
          "(other work on the machine slows every figure above)")
    if not args.workdir:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
