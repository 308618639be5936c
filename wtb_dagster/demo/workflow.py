"""Offline demo workflow: a question-answering graph over the Northwind Gadgets corpus and shop DB.

Graph: START -> router -> (docs) retrieve -> grade -> generate -> END
                        -> (sql)  sql_answer -> END

Every node has a baseline implementation (registered by `build_graph`) and, for `router`,
`retrieve` and `generate`, alternative variants with the same signature. Everything is pure
stdlib and deterministic, so variant combinations can be compared on `data/cases.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, Literal, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from wtb_dagster.workspaces import workspace_dir

TOP_K = 2
"""Number of passages every retriever returns."""


class DemoState(TypedDict, total=False):
    """State flowing through the demo graph."""

    question: str
    route: str
    documents: list[dict[str, Any]]
    relevant: list[dict[str, Any]]
    answer: str
    sql: str
    error: str


# --------------------------------------------------------------------------------------
# Data loading
# --------------------------------------------------------------------------------------


def data_dir() -> Traversable:
    """Directory holding the shipped corpus, shop.sql and cases.jsonl."""
    return files("wtb_dagster.demo") / "data"


def load_cases() -> list[dict[str, Any]]:
    """Load the gold test cases from `data/cases.jsonl`."""
    text = (data_dir() / "cases.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class Passage:
    """One retrievable chunk: a section of a corpus document."""

    id: str
    title: str
    text: str


def _split_sections(doc_id: str, markdown: str) -> list[Passage]:
    doc_title, section = doc_id, "Overview"
    chunks: list[tuple[str, list[str]]] = [(section, [])]
    for line in markdown.splitlines():
        if line.startswith("## "):
            chunks.append((line[3:].strip(), []))
        elif line.startswith("# "):
            doc_title = line[2:].strip()
        else:
            chunks[-1][1].append(line)
    passages = []
    for section, lines in chunks:
        text = " ".join(" ".join(lines).split())
        if text:
            slug = re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")
            passages.append(Passage(f"{doc_id}#{slug}", f"{doc_title}: {section}", text))
    return passages


@lru_cache(maxsize=1)
def load_passages() -> tuple[Passage, ...]:
    """Split every corpus document into one passage per `##` section (plus its intro)."""
    corpus = data_dir() / "corpus"
    passages: list[Passage] = []
    # Sorted so passage order (used for tie-breaking) is identical on every platform.
    for path in sorted(corpus.iterdir(), key=lambda p: p.name):
        if path.name.endswith(".md"):
            doc_id = path.name.removesuffix(".md")
            passages.extend(_split_sections(doc_id, path.read_text(encoding="utf-8")))
    return tuple(passages)


@lru_cache(maxsize=1)
def _shop_script() -> str:
    return (data_dir() / "shop.sql").read_text(encoding="utf-8")


def open_shop_db() -> sqlite3.Connection:
    """Open a fresh in-memory copy of the shop DB.

    A new connection per call keeps the node thread-safe without locks; the DB is tiny, so
    building it costs well under a millisecond.
    """
    conn = sqlite3.connect(":memory:")
    conn.executescript(_shop_script())
    return conn


@lru_cache(maxsize=1)
def _shop_vocabulary() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Product names, categories and customer names, longest first for greedy matching."""
    with closing(open_shop_db()) as conn:
        products = [r[0] for r in conn.execute("SELECT name FROM products")]
        categories = [r[0] for r in conn.execute("SELECT DISTINCT category FROM products")]
        customers = [r[0] for r in conn.execute("SELECT name FROM customers")]

    def order(names: list[str]) -> tuple[str, ...]:
        return tuple(sorted(names, key=lambda n: (-len(n), n)))

    return order(products), order(categories), order(customers)


# --------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------

_STOPWORDS_TEXT = """
    a an and are as at be by can do does did for from get got have has how i if in is it its
    me my of on or our the their there this to was we what when where which who why will with
    you your after before much many long about into than then that these those any should
    would could per
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

_WORD = re.compile(r"[a-z0-9]+(?:[.@][a-z0-9]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens; keeps decimals and e-mail addresses whole."""
    return _WORD.findall(text.lower())


def stem(token: str) -> str:
    """Tiny suffix stripper so that 'returns', 'returned' and 'return' share a term."""
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 5 and token.endswith("ing"):
        return token[:-3]
    if len(token) > 5 and token.endswith("ed"):
        return token[:-2]
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        return token[:-1]
    return token


def content_terms(text: str) -> list[str]:
    """Stemmed tokens without stopwords."""
    return [stem(t) for t in tokenize(text) if t not in STOPWORDS]


def split_sentences(text: str) -> list[str]:
    """Split a passage into sentences."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _as_documents(scored: Iterable[tuple[float, int]], passages: tuple[Passage, ...]) -> list[dict]:
    """Top-k passages as state dicts; ties broken by corpus order for determinism."""
    ranked = sorted(scored, key=lambda item: (-item[0], item[1]))[:TOP_K]
    return [
        {
            "id": passages[i].id,
            "title": passages[i].title,
            "text": passages[i].text,
            "score": round(score, 4),
        }
        for score, i in ranked
    ]


# --------------------------------------------------------------------------------------
# router
# --------------------------------------------------------------------------------------

_ORDER_ID = re.compile(r"\border\s+#?(\d+)\b")
_PRODUCT_ATTRIBUTE = re.compile(r"\b(price|cost|costs|stock|units|category|ordered|sold)\b")
_ORDER_STATUS = re.compile(r"\b(pending|shipped|delivered|cancelled|returned)\b")


def _mentions(question: str, names: Iterable[str]) -> str | None:
    lowered = question.lower()
    for name in names:
        if re.search(rf"\b{re.escape(name.lower())}\b", lowered):
            return name
    return None


def route_rules(state: DemoState) -> dict:
    """Baseline router: send a question to SQL only when it asks about DB entities."""
    q = state.get("question", "").lower()
    products, categories, customers = _shop_vocabulary()
    # Product specs (battery life, weight, ...) live in the catalogue, so a product name
    # alone is not enough: it must come with an attribute that only the DB stores.
    is_sql = (
        bool(_ORDER_ID.search(q))
        or (_mentions(q, products) is not None and bool(_PRODUCT_ATTRIBUTE.search(q)))
        or ("orders" in q and bool(_ORDER_STATUS.search(q) or _mentions(q, customers)))
        or bool(re.search(r"\b(most expensive|cheapest|lowest stock|highest stock)\b", q))
        or ("products" in q and _mentions(q, categories) is not None and "category" in q)
    )
    return {"route": "sql" if is_sql else "docs"}


_SQL_HINTS = ("price", "cost", "stock", "orders", "how many", "cheapest", "expensive")


def route_keyword(state: DemoState) -> dict:
    """Variant router: any 'data-sounding' keyword means SQL (misroutes e.g. 'how many days')."""
    q = state.get("question", "").lower()
    return {"route": "sql" if any(hint in q for hint in _SQL_HINTS) else "docs"}


def _branch(state: DemoState) -> Literal["docs", "sql"]:
    return "sql" if state.get("route") == "sql" else "docs"


# --------------------------------------------------------------------------------------
# retrieve
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _raw_index() -> tuple[Counter[str], ...]:
    return tuple(Counter(tokenize(p.text)) for p in load_passages())


def retrieve_keyword(state: DemoState) -> dict:
    """Baseline retriever: raw count of question words in each passage.

    Deliberately naive (no stopwords, no stemming, no length normalisation), so long
    passages full of 'the'/'you' tend to win.
    """
    passages = load_passages()
    query = tokenize(state.get("question", ""))
    scored = [(float(sum(counts[t] for t in query)), i) for i, counts in enumerate(_raw_index())]
    return {"documents": _as_documents(scored, passages)}


@dataclass(frozen=True)
class _Bm25Index:
    term_freqs: tuple[Counter[str], ...]
    lengths: tuple[int, ...]
    avg_length: float
    idf: dict[str, float]


@lru_cache(maxsize=1)
def _bm25_index() -> _Bm25Index:
    # Section titles are indexed with the text: they are short, precise topic labels.
    docs = [content_terms(f"{p.title} {p.text}") for p in load_passages()]
    n = len(docs)
    df = Counter(term for doc in docs for term in set(doc))
    idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
    lengths = tuple(len(d) for d in docs)
    return _Bm25Index(tuple(Counter(d) for d in docs), lengths, sum(lengths) / n, idf)


BM25_K1 = 1.5
BM25_B = 0.75


def retrieve_bm25(state: DemoState) -> dict:
    """Variant retriever: Okapi BM25 over stemmed, stopword-free passage + section title."""
    index, k1, b = _bm25_index(), BM25_K1, BM25_B
    query = set(content_terms(state.get("question", "")))
    scored = []
    for i, tf in enumerate(index.term_freqs):
        norm = k1 * (1 - b + b * index.lengths[i] / index.avg_length)
        score = sum(index.idf[t] * tf[t] * (k1 + 1) / (tf[t] + norm) for t in query if tf[t])
        scored.append((score, i))
    return {"documents": _as_documents(scored, load_passages())}


@lru_cache(maxsize=1)
def _tfidf_index() -> tuple[dict[str, float], tuple[dict[str, float], ...]]:
    # Unstemmed and text-only: a plain vector-space baseline, weaker than BM25 here.
    docs = [[t for t in tokenize(p.text) if t not in STOPWORDS] for p in load_passages()]
    n = len(docs)
    df = Counter(term for doc in docs for term in set(doc))
    idf = {t: math.log((1 + n) / (1 + f)) + 1 for t, f in df.items()}
    vectors = []
    for doc in docs:
        vec = {t: (1 + math.log(c)) * idf[t] for t, c in Counter(doc).items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        vectors.append({t: v / norm for t, v in vec.items()})
    return idf, tuple(vectors)


def retrieve_tfidf(state: DemoState) -> dict:
    """Variant retriever: cosine similarity of log-TF x IDF vectors."""
    idf, vectors = _tfidf_index()
    counts = Counter(
        t for t in tokenize(state.get("question", "")) if t not in STOPWORDS and t in idf
    )
    query = {t: (1 + math.log(c)) * idf[t] for t, c in counts.items()}
    qnorm = math.sqrt(sum(v * v for v in query.values())) or 1.0
    scored = [
        (sum(w * vec.get(t, 0.0) for t, w in query.items()) / qnorm, i)
        for i, vec in enumerate(vectors)
    ]
    return {"documents": _as_documents(scored, load_passages())}


# --------------------------------------------------------------------------------------
# grade
# --------------------------------------------------------------------------------------

GRADE_THRESHOLD = 0.25


def grade_overlap(state: DemoState) -> dict:
    """Keep passages covering at least a quarter of the question's content terms."""
    documents = state.get("documents", [])
    query = set(content_terms(state.get("question", "")))
    if not query:
        return {"relevant": list(documents[:1])}
    relevant = [
        doc
        for doc in documents
        if len(query & set(content_terms(doc["text"]))) / len(query) >= GRADE_THRESHOLD
    ]
    # Falling back to the top hit beats answering from nothing.
    return {"relevant": relevant or list(documents[:1])}


# --------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------

NO_ANSWER = "I don't know."


def best_sentence(question: str, documents: list[dict]) -> str | None:
    """Sentence sharing the most distinct content terms with the question.

    Ties go to the higher-ranked passage, then the earlier sentence, so retrieval order
    matters and the result is deterministic.
    """
    query = set(content_terms(question))
    best: tuple[int, str] | None = None
    for doc in documents:
        for sentence in split_sentences(doc["text"]):
            overlap = len(query & set(content_terms(sentence)))
            if best is None or overlap > best[0]:
                best = (overlap, sentence)
    return best[1] if best else None


def generate_extractive(state: DemoState) -> dict:
    """Baseline generator: answer with the best-matching sentence, verbatim."""
    sentence = best_sentence(state.get("question", ""), state.get("relevant", []))
    return {"answer": sentence or NO_ANSWER}


SAMPLING_TEMPERATURE = 0.3  # share of answers that take another candidate sentence


def generate_sampled(state: DemoState, config: RunnableConfig) -> dict:
    """A generator that samples like an LLM at a temperature: usually the best sentence, now and
    then another candidate. Seeded by the thread id, so every trial is its own sample and a
    rerun of the same thread draws the same one (reproducible without an API key)."""
    question = state.get("question", "")
    documents = state.get("relevant", [])
    best = best_sentence(question, documents)
    thread_id = str((config.get("configurable") or {}).get("thread_id", ""))
    rng = random.Random(hashlib.sha256(thread_id.encode()).digest())
    candidates = [s for doc in documents for s in split_sentences(doc["text"]) if s != best]
    if candidates and rng.random() < SAMPLING_TEMPERATURE:
        return {"answer": rng.choice(candidates)}
    return {"answer": best or NO_ANSWER}


_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
_UNITS = r"(?:business |calendar )?(?:days?|weeks?|months?|years?|hours?|minutes?)"
_PATTERNS = {
    "email": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    "date": re.compile(rf"\b(?:{_MONTHS}) \d{{1,2}}\b", re.IGNORECASE),
    "time": re.compile(r"\b\d{1,2}(?::\d{2})? ?(?:am|pm)\b", re.IGNORECASE),
    "money": re.compile(r"\$\d[\d,]*(?:\.\d+)?"),
    "percent": re.compile(r"\b\d+(?:\.\d+)?%"),
    "duration": re.compile(rf"\b\d[\d,]* {_UNITS}\b"),
    "measure": re.compile(r"\b\d[\d,.]* ?(?:[A-Za-z]+)\b"),
    "number": re.compile(r"\b\d[\d,.]*\b"),
}
_PROPER = re.compile(r"\b[A-Z][A-Za-z0-9+]*(?:(?:,? | of | and )?[A-Z][A-Za-z0-9+]*)*")


def _answer_kinds(question: str) -> list[str]:
    """Which fact patterns to try, most specific first, given the question wording."""
    q = question.lower()
    if "email" in q:
        return ["email"]
    if re.search(r"\bwhat date\b|\buntil when\b", q):
        return ["date"]
    if re.search(r"\bwhat time\b", q):
        return ["time"]
    if re.search(r"\bhow much\b.*\bweigh\b|\bhow bright\b|\bcapacity\b", q):
        return ["measure", "number"]
    if re.search(r"\bhow much\b|\bcost\b|\bprice\b|\bfee\b|\bvalue\b|\bdiscount\b|\bbonus\b", q):
        return ["money", "percent", "number"]
    if re.search(
        r"\bhow long\b|\bwhen\b|\bbattery life\b|\bhow many (days|hours|minutes|months|years)\b", q
    ):
        return ["duration", "number"]
    if re.search(r"\bhow many\b|\bminimum\b|\bmaximum\b|\blength\b", q):
        return ["count", "number"]
    if re.search(r"\b(who|which|where|what)\b", q):
        return ["proper"]
    return []


def _extract(kind: str, question: str, sentence: str) -> str | None:
    if kind == "proper":
        # Names the question already uses (or the company name) are never the answer.
        known = set(tokenize(question)) | {"northwind"}
        spans = [
            m.group(0)
            for m in _PROPER.finditer(sentence)
            if m.start() > 0 and not set(tokenize(m.group(0))) <= known
        ]
        return " and ".join(spans) or None
    if kind == "count":
        # "How many points ..." -> prefer "<n> points" so the unit survives.
        noun = re.search(r"\bhow many (\w+)", question.lower())
        if noun:
            unit = re.escape(stem(noun.group(1)))
            m = re.search(rf"\b\d[\d,]* (?:\w+ )?{unit}\w*", sentence, re.IGNORECASE)
            if m:
                return m.group(0)
        m = re.search(r"\b\d[\d,]* \w+", sentence)
        return m.group(0) if m else None
    m = _PATTERNS[kind].search(sentence)
    return m.group(0) if m else None


def generate_template(state: DemoState) -> dict:
    """Variant generator: pull the key fact (amount, duration, name, ...) out of the best sentence.

    Short answers score much higher token F1, but the first pattern match is not always
    the asked-for fact, so containment can drop.
    """
    question = state.get("question", "")
    sentence = best_sentence(question, state.get("relevant", []))
    if sentence is None:
        return {"answer": NO_ANSWER}
    for kind in _answer_kinds(question):
        fact = _extract(kind, question, sentence)
        if fact:
            return {"answer": fact.rstrip(".,")}
    return {"answer": sentence}


# --------------------------------------------------------------------------------------
# sql_answer
# --------------------------------------------------------------------------------------


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _plan_sql(question: str) -> tuple[str, tuple[Any, ...]] | None:
    """Map a question onto a parameterised query with fixed pattern rules."""
    q = question.lower()
    products, categories, customers = _shop_vocabulary()
    order_id = _ORDER_ID.search(q)
    if order_id:
        oid = int(order_id.group(1))
        if re.search(r"\bwho\b|\bcustomer\b", q):
            return (
                "SELECT c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
                "WHERE o.id = ?",
                (oid,),
            )
        if re.search(r"\bwhen\b|\bdate\b", q):
            return "SELECT order_date FROM orders WHERE id = ?", (oid,)
        if re.search(r"\bwhat\b.*\bproduct\b|\bwhich product\b", q):
            return (
                "SELECT p.name FROM orders o JOIN products p ON p.id = o.product_id WHERE o.id = ?",
                (oid,),
            )
        return "SELECT status FROM orders WHERE id = ?", (oid,)

    if "orders" in q and re.search(r"\bhow many\b|\bnumber of\b", q):
        customer = _mentions(q, customers)
        if customer:
            return (
                "SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id "
                "WHERE c.name = ?",
                (customer,),
            )
        status = _ORDER_STATUS.search(q)
        if status:
            return "SELECT COUNT(*) FROM orders WHERE status = ?", (status.group(1),)
        return "SELECT COUNT(*) FROM orders", ()

    product = _mentions(q, products)
    if product:
        if re.search(r"\b(ordered|sold)\b", q):
            return (
                "SELECT COALESCE(SUM(o.quantity), 0) FROM orders o "
                "JOIN products p ON p.id = o.product_id WHERE p.name = ?",
                (product,),
            )
        if re.search(r"\b(stock|units|available)\b", q):
            return "SELECT stock FROM products WHERE name = ?", (product,)
        if re.search(r"\b(price|cost|costs|how much)\b", q):
            return "SELECT price FROM products WHERE name = ?", (product,)
        if "category" in q:
            return "SELECT category FROM products WHERE name = ?", (product,)

    category = _mentions(q, categories)
    where, params = ("WHERE category = ?", (category,)) if category else ("", ())
    if re.search(r"\bhow many products\b", q):
        return f"SELECT COUNT(*) FROM products {where}".strip(), params
    extremes = {
        "most expensive": "price DESC",
        "cheapest": "price ASC",
        "lowest stock": "stock ASC",
        "highest stock": "stock DESC",
    }
    for phrase, ordering in extremes.items():
        if phrase in q:
            return f"SELECT name FROM products {where} ORDER BY {ordering}, name LIMIT 1", params
    return None


def sql_answer(state: DemoState, config: RunnableConfig) -> dict:
    """Answer a shop-database question with a rule-built SQL query on an in-memory DB.

    With a thread workspace (`workspace: true`), the query is also appended to its
    `query_log.sql`: a file side effect that `wtb files` shows and a rollback restores."""
    plan = _plan_sql(state.get("question", ""))
    if plan is None:
        return {"answer": NO_ANSWER, "sql": "", "error": "no SQL pattern matches the question"}
    sql, params = plan
    folder = workspace_dir(config, missing_ok=True)
    if folder is not None:
        with (folder / "query_log.sql").open("a") as log:
            log.write(f"-- {state.get('question', '')}\n{sql};  -- params: {list(params)}\n")
    with closing(open_shop_db()) as conn:
        row = conn.execute(sql, params).fetchone()
    if row is None or row[0] is None:
        return {"answer": NO_ANSWER, "sql": sql, "error": "query returned no rows"}
    return {"answer": _fmt(row[0]), "sql": sql}


# --------------------------------------------------------------------------------------
# Graph
# --------------------------------------------------------------------------------------


def build_graph() -> StateGraph:
    """Uncompiled demo graph wired with the baseline node implementations."""
    graph = StateGraph(DemoState)
    graph.add_node("router", route_rules)
    graph.add_node("retrieve", retrieve_keyword)
    graph.add_node("grade", grade_overlap)
    graph.add_node("generate", generate_extractive)
    graph.add_node("sql_answer", sql_answer)
    graph.add_edge(START, "router")
    graph.add_conditional_edges("router", _branch, {"docs": "retrieve", "sql": "sql_answer"})
    graph.add_edge("retrieve", "grade")
    graph.add_edge("grade", "generate")
    graph.add_edge("generate", END)
    graph.add_edge("sql_answer", END)
    return graph
