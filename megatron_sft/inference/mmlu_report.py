"""MMLU accuracy by subject and by category, with macro (mean of subjects) and micro (all questions) averages."""

from __future__ import annotations

_CATEGORY_SUBJECTS = {
    "STEM": (
        "abstract_algebra astronomy college_biology college_chemistry college_computer_science college_mathematics "
        "college_physics computer_security conceptual_physics electrical_engineering elementary_mathematics "
        "high_school_biology high_school_chemistry high_school_computer_science high_school_mathematics "
        "high_school_physics high_school_statistics machine_learning"
    ),
    "humanities": (
        "formal_logic high_school_european_history high_school_us_history high_school_world_history "
        "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy prehistory "
        "professional_law world_religions"
    ),
    "social sciences": (
        "econometrics high_school_geography high_school_government_and_politics high_school_macroeconomics "
        "high_school_microeconomics high_school_psychology human_sexuality professional_psychology "
        "public_relations security_studies sociology us_foreign_policy"
    ),
    "other": (
        "anatomy business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
        "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology"
    ),
}
CATEGORIES = {subject: cat for cat, names in _CATEGORY_SUBJECTS.items() for subject in names.split()}


def category_of(subject: str) -> str:
    return CATEGORIES.get(subject, "other")


def _average(subjects: dict[str, dict]) -> dict:
    correct = sum(s["correct"] for s in subjects.values())
    total = sum(s["total"] for s in subjects.values())
    return {
        "micro": correct / total if total else 0.0,
        "macro": sum(s["accuracy"] for s in subjects.values()) / len(subjects) if subjects else 0.0,
        "correct": correct,
        "total": total,
        "subjects": len(subjects),
    }


def summarize(predictions: dict[str, list[str]], answers: dict[str, list[str]]) -> dict:
    """Accuracy per subject, per category and overall from predicted and true letters per subject."""
    subjects = {}
    for name in sorted(predictions):
        pred, true = predictions[name], answers[name]
        correct = sum(p == t for p, t in zip(pred, true))
        subjects[name] = {
            "category": category_of(name),
            "accuracy": correct / len(true) if true else 0.0,
            "correct": correct,
            "total": len(true),
            "predictions": "".join(pred),
            "answers": "".join(true),
        }
    categories = {}
    for cat in sorted({s["category"] for s in subjects.values()}):
        categories[cat] = _average({n: s for n, s in subjects.items() if s["category"] == cat})
    return {"subjects": subjects, "categories": categories, "overall": _average(subjects)}


def format_table(report: dict) -> str:
    """A plain-text table: one line per subject, then per category and overall."""
    lines = [f"{'subject':<42} {'category':<16} {'acc':>6} {'n':>6}"]
    for name, s in report["subjects"].items():
        lines.append(f"{name:<42} {s['category']:<16} {s['accuracy']:>6.3f} {s['total']:>6}")
    lines.append("")
    lines.append(f"{'category':<42} {'macro':>8} {'micro':>8} {'n':>6}")
    for name, c in [*report["categories"].items(), ("ALL", report["overall"])]:
        lines.append(f"{name:<42} {c['macro']:>8.3f} {c['micro']:>8.3f} {c['total']:>6}")
    return "\n".join(lines)
