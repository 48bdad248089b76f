"""The offline coach: for any call, the seller's analytics, checklist verdicts and a grade estimate learned from the
company's own graded calls, and the feedback similar graded calls received. No LLM and no torch: scikit-learn on
TF-IDF of the seller's words beside the analytics (calltune.coaching.analytics).

- Fitted on the train split: per checklist item of the scorecard, a logistic regression on its yes/no labels; for the
  grade, a ridge regression. Features: TF-IDF of the seller's words (words and word pairs, sublinear tf) beside the
  analytics, standardised and clipped to 3 standard deviations.
- Measured on the test split's graded calls, each figure with a 95% bootstrap interval over those calls (seeded) and
  its baseline beside it: an item's accuracy and F1 (of its rarer answer in training) against always giving the
  training majority; the grade's MAE and Spearman against always guessing the training mean; and the paired gain
  over the baseline. An item whose accuracy does not beat its baseline's is "not judged"; a grade model whose MAE
  does not beat the baseline's shows no grade. A gain whose interval holds 0 is within noise, and says so.
- Persisted as coach.json: the scorecard, the settings, the figures and the training records (each training call's
  seller text, analytics, labels, grade and the export's summaries). Loading refits the models from those records:
  the fit is deterministic and takes milliseconds, and nothing executable (no pickle) is ever stored or loaded.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from calltune.coaching.analytics import METRICS, analyze, distribution, feature_row, has_seller_turn, place
from calltune.coaching.scorecard import Scorecard, criterion_summaries, labels
from calltune.conversation.schema import Call
from calltune.core.io import write_json
from calltune.evaluation import metrics as M

FORMAT = 1
QUOTE_CHARS = 240  # characters of a turn quoted as evidence
CLIP = 3.0         # standardised analytics are clipped to this many standard deviations


class CoachError(ValueError):
    """A call the coach cannot review (no seller turn), or a coach file it cannot read."""


def seller_text(turns: list[dict]) -> str:
    return " ".join(t["text"] for t in turns if t["role"] == "seller" and t["text"].strip())


def record(call: Call, scorecard: Scorecard | None) -> dict:
    """What the coach keeps of a training call (and measures a test call by)."""
    out = {"call_id": call["call_id"], "seller": seller_text(call["turns"]), "values": analyze(call["turns"])["values"]}
    if scorecard is not None and call.get("evaluation"):
        out["grade"] = call["evaluation"]["grade"]
        out["labels"] = {f"{c}.{i}": v for (c, i), v in labels(call, scorecard).items()}
        out["summaries"] = {str(c): list(s) for c, s in criterion_summaries(call, scorecard).items()}
    return out


def figure(e: M.Estimate) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in e.as_dict().items()}


def _f1_parts(truth: np.ndarray, predicted: np.ndarray, positive: bool) -> np.ndarray:
    """Per call (true positive, false positive, false negative) of the `positive` answer: the sums give F1."""
    t, p = truth == positive, predicted == positive
    return np.stack([t & p, ~t & p, t & ~p], 1).astype(np.float64)


def _f1(sums: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * sums[:, 0] / (2 * sums[:, 0] + sums[:, 1] + sums[:, 2])


def spearman(predicted: np.ndarray, truth: np.ndarray, samples: int, seed: int) -> M.Estimate:
    from scipy.stats import spearmanr

    def stat(weights: np.ndarray) -> float:
        idx = np.repeat(np.arange(len(truth)), weights.astype(int))
        with warnings.catch_warnings():  # a resample of equal values has no rank correlation: NaN, left out
            warnings.simplefilter("ignore")
            return float(spearmanr(predicted[idx], truth[idx]).statistic)

    return M.resampled(len(truth), stat, samples=samples, seed=seed)


def within_noise(gain: dict) -> bool:
    return gain.get("low") is None or gain["low"] <= 0


class Coach:
    """The fitted coach (see the module docstring). `scorecard` None: the data had no grades, the review is the
    analytics alone."""

    def __init__(self, scorecard: Scorecard | None, records: list[dict], *, figures: dict | None = None,
                 settings: dict | None = None):
        self.scorecard, self.records = scorecard, records
        self.figures, self.settings = figures or {}, {"similar_calls": 3, **(settings or {})}
        self.reference = distribution([r["values"] for r in records])
        self.graded = [r for r in records if "grade" in r]
        self.items: dict[str, object] = {}   # "c.i" -> fitted classifier
        self.grader = None
        self._fit()

    # ---- fitting (deterministic: the same records give the same models) ----
    def _fit(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.preprocessing import StandardScaler

        self.vectorizer = self.scaler = None
        if not self.graded:
            return
        texts = [r["seller"] for r in self.records]
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2 if len(texts) >= 10 else 1)
        try:
            self.vectorizer.fit(texts)
        except ValueError:  # sklearn's "empty vocabulary"
            raise CoachError(f"the {len(texts)} training calls' seller lines share no word to learn from") from None
        self.scaler = StandardScaler().fit([feature_row(r["values"]) for r in self.records])
        x = self._features(self.graded)
        for key in sorted({k for r in self.graded for k in r.get("labels", {})}):
            rows = [i for i, r in enumerate(self.graded) if key in r["labels"]]
            y = np.array([self.graded[i]["labels"][key] for i in rows])
            if len(set(y)) == 2:
                self.items[key] = LogisticRegression(max_iter=2000).fit(x[rows], y)
        self.grader = Ridge(alpha=1.0).fit(x, [r["grade"] for r in self.graded])

    def _features(self, rows: list[dict]):
        from scipy.sparse import csr_matrix, hstack

        words = self.vectorizer.transform([r["seller"] for r in rows])
        # A practice call can lie far outside the training calls (one line, a monologue): clipped to 3 standard
        # deviations, its analytics cannot outweigh everything its words say.
        numbers = np.clip(self.scaler.transform([feature_row(r["values"]) for r in rows]), -CLIP, CLIP)
        return hstack([words, csr_matrix(numbers)]).tocsr()

    def _grades(self, x) -> np.ndarray:
        return np.clip(self.grader.predict(x), self.scorecard.grade_min, self.scorecard.grade_max)

    # ---- measuring on the test split ----
    @classmethod
    def train(cls, train: list[Call], test: list[Call], scorecard: Scorecard | None, *, samples: int, seed: int,
              settings: dict | None = None) -> Coach:
        """Fit on the train calls, measure on the test calls' grades and labels."""
        coach = cls(scorecard, [record(c, scorecard) for c in train], settings=settings)
        coach.figures = coach.measure([record(c, scorecard) for c in test if c.get("evaluation")], samples, seed)
        return coach

    def measure(self, test: list[dict], samples: int, seed: int) -> dict:
        kw = {"samples": samples, "seed": seed}
        figures: dict = {"train_calls": len(self.records), "graded_train": len(self.graded), "graded_test": len(test),
                         "items": {}, "grade": {}}
        if self.scorecard is None:
            return figures
        x = self._features(test) if test and self.graded else None
        for ci, criterion in enumerate(self.scorecard.criteria):
            for ii, item in enumerate(criterion.items):
                key = f"{ci}.{ii}"
                train_y = [r["labels"][key] for r in self.graded if key in r.get("labels", {})]
                rows = [i for i, r in enumerate(test) if key in r["labels"]]
                truth = np.array([test[i]["labels"][key] for i in rows], dtype=bool)
                entry = {"criterion": criterion.title, "item": item.name, "n_train": len(train_y), "n_test": len(rows)}
                figures["items"][key] = entry
                if key not in self.items:
                    entry.update(judged=False, why="no labels to learn from in the training calls" if not train_y else
                                 f"every training call has the same answer ({'yes' if train_y[0] else 'no'})")
                    continue
                majority = sum(train_y) * 2 >= len(train_y)
                entry["majority"] = "yes" if majority else "no"
                entry["f1_of"] = "no" if majority else "yes"  # the rarer answer: the baseline never gives it
                if not rows:
                    entry.update(judged=False, why="no graded test call holds this item: it could not be measured")
                    continue
                predicted = self.items[key].predict(x[rows])
                right, base_right = (predicted == truth).astype(float), (truth == majority).astype(float)
                accuracy, baseline = M.mean(right, **kw), M.mean(base_right, **kw)
                entry.update(accuracy=figure(accuracy), baseline_accuracy=figure(baseline),
                             gain=figure(M.mean(right - base_right, **kw)),
                             f1=figure(M.from_sums(_f1_parts(truth, predicted, not majority), _f1, **kw)),
                             baseline_f1=figure(M.from_sums(_f1_parts(truth, np.full(len(truth), majority),
                                                                         not majority), _f1, **kw)))
                entry["judged"] = accuracy.value > baseline.value
                if not entry["judged"]:
                    entry["why"] = (f"its test accuracy {accuracy.value:.2f} does not beat always answering "
                                    f"{entry['majority']} ({baseline.value:.2f}) on {len(rows)} test calls")
        if not self.graded or not test:
            figures["grade"] = {"shown": False, "why": "no graded test call to measure a grade estimate on" if
                                self.graded else "no graded training call to learn a grade from"}
            return figures
        truth = np.array([r["grade"] for r in test], dtype=float)
        predicted, mean = self._grades(x), float(np.mean([r["grade"] for r in self.graded]))
        error, base_error = np.abs(predicted - truth), np.abs(mean - truth)
        mae, base_mae = M.mean(error, **kw), M.mean(base_error, **kw)
        figures["grade"] = {"n_test": len(test), "train_mean": mean, "mae": figure(mae),
                            "baseline_mae": figure(base_mae), "gain": figure(M.mean(base_error - error, **kw)),
                            "spearman": figure(spearman(predicted, truth, **kw)), "shown": mae.value < base_mae.value}
        if not figures["grade"]["shown"]:
            figures["grade"]["why"] = (f"its test MAE {mae.value:.2f} does not beat always guessing the training mean "
                                       f"{mean:.1f} (MAE {base_mae.value:.2f}) on {len(test)} test calls")
        return figures

    # ---- persistence ----
    def save(self, path: Path) -> None:
        write_json(path, {"format": FORMAT, "scorecard": self.scorecard.model_dump() if self.scorecard else None,
                          "settings": self.settings, "figures": self.figures, "records": self.records})

    @classmethod
    def load(cls, path: str | Path) -> Coach:
        """A coach.json (the coach step's, or a model folder's coach/coach.json): the models refitted."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            scorecard = Scorecard.model_validate(data["scorecard"]) if data["scorecard"] else None
            return cls(scorecard, data["records"], figures=data["figures"], settings=data["settings"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CoachError(f"cannot read the coach {path} ({type(exc).__name__}: {exc})") from None

    # ---- the review of one call ----
    def notice(self) -> str:
        f = self.figures
        if self.scorecard is None:
            return ("The training data had no grades, so this review is the conversation analytics alone: no "
                    "checklist and no grade estimate.")
        if not self.graded:
            return ("The training data had no grades: the scorecard below is the one given, with no verdicts and no "
                    "grade estimate; the review is the conversation analytics.")
        return (f"Learned from {f.get('graded_train', len(self.graded))} graded training calls and measured on "
                f"{f.get('graded_test', 0)} graded test calls: with so few, every figure here is uncertain, its "
                f"interval is wide, and a verdict or grade that did not beat its simple baseline is not shown.")

    def review(self, call: dict) -> dict:
        """The offline review of one call ({"turns": [{"role", "text"}], ...}): analytics placed among the training
        sellers, each checklist item's verdict (or why it is not judged), the grade estimate (or why there is
        none), and per criterion the export's feedback on the most similar graded training calls. Evidence names
        the call's turns by index. CoachError when the call has no seller turn."""
        turns = [{"role": t["role"], "text": t["text"]} for t in call["turns"]]
        if not has_seller_turn(turns):
            raise CoachError("this call has no seller turn: there is nothing of yours to review (say something to "
                             "the customer, then end the call)")
        analysis = analyze(turns)

        def quote(i: int) -> dict:
            return {"turn": i, "role": turns[i]["role"], "quote": turns[i]["text"][:QUOTE_CHARS]}

        analytics = [{**place(m, analysis["values"][m], self.reference.get(m, [])),
                      "evidence": [quote(i) for i in analysis["evidence"].get(m, [])]} for m in METRICS]
        out = {"notice": self.notice(), "analytics": analytics, "criteria": [], "scorecard": self.scorecard is not None,
               "grade": {"estimate": None, "why": self.figures.get("grade", {}).get("why", "the training data had no "
                                                                                    "grades")}}
        if self.scorecard is None:
            return out
        rec = {"call_id": call.get("call_id", ""), "seller": seller_text(turns), "values": analysis["values"]}
        x = words = None
        similar: list[tuple[dict, float]] = []
        seller_turns = [i for i, t in enumerate(turns) if t["role"] == "seller" and t["text"].strip()]
        if self.vectorizer is not None:  # models were fitted: there were graded training calls
            x = self._features([rec])
            out["grade"] = self._grade(x)
            words = self.vectorizer.transform([turns[i]["text"] for i in seller_turns])
            similar = self._similar(rec)
        for ci, criterion in enumerate(self.scorecard.criteria):
            items = []
            for ii, item in enumerate(criterion.items):
                key = f"{ci}.{ii}"
                fig = self.figures.get("items", {}).get(key, {})
                entry = {"name": item.name, "original": item.original, "verdict": "not judged", "evidence": [],
                         "figures": {k: fig[k] for k in ("accuracy", "baseline_accuracy", "gain", "f1", "baseline_f1",
                                                         "majority", "f1_of", "n_test") if k in fig}}
                if key in self.items and fig.get("judged"):
                    model = self.items[key]
                    p_yes = float(model.predict_proba(x)[0][list(model.classes_).index(True)])
                    yes = p_yes >= 0.5
                    entry.update(verdict="yes" if yes else "no", probability=p_yes,
                                 within_noise=within_noise(fig.get("gain", {})))
                    # The seller line that weighed most toward the verdict (its words' share of the decision).
                    weights = model.coef_[0][:words.shape[1]] * (1 if yes else -1)
                    pushes = words @ weights
                    if len(pushes) and pushes.max() > 0:
                        entry["evidence"].append(quote(seller_turns[int(np.argmax(pushes))]))
                else:
                    entry["why"] = fig.get("why", "not measured")
                items.append(entry)
            out["criteria"].append({"title": criterion.title, "original": criterion.original, "items": items,
                                    "similar": [{"call_id": r["call_id"], "grade": r["grade"], "similarity": sim,
                                                 "summary": r["summaries"][str(ci)][0],
                                                 "summary_original": r["summaries"][str(ci)][1]}
                                                for r, sim in similar if str(ci) in r.get("summaries", {})]})
        return out

    def _grade(self, x) -> dict:
        fig = self.figures.get("grade", {})
        if not fig.get("shown"):
            return {"estimate": None, "why": fig.get("why", "the grade estimate was not measured")}
        estimate, mae = float(self._grades(x)[0]), fig["mae"]
        return {"estimate": estimate, "shown": f"about {estimate:.0f} (±{mae['value']:.1f})",
                "scale": [self.scorecard.grade_min, self.scorecard.grade_max], "mae": mae,
                "baseline_mae": fig["baseline_mae"], "spearman": fig["spearman"], "n_test": fig["n_test"],
                "within_noise": within_noise(fig["gain"])}

    def _similar(self, rec: dict) -> list[tuple[dict, float]]:
        """(graded training record, similarity) of the calls whose seller words are closest to this call's (TF-IDF
        cosine), closest first; the call itself (reviewed again from its export) is not its own neighbour."""
        if not rec["seller"]:
            return []
        sims = (self.vectorizer.transform([r["seller"] for r in self.graded])
                @ self.vectorizer.transform([rec["seller"]]).T).toarray()[:, 0]
        order = [i for i in np.argsort(-sims, kind="stable") if sims[i] > 0 and self.graded[i]["seller"] != rec["seller"]
                 and self.graded[i]["call_id"] != rec["call_id"]]
        return [(self.graded[i], round(float(sims[i]), 3)) for i in order[:self.settings["similar_calls"]]]
