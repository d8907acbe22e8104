"""Overlap of answers with reference answers: BLEU and chrF (sacrebleu) and ROUGE-L
(rouge-score), corpus-level as the papers define them (docs/evaluation.md).

- BLEU (Papineni et al. 2002, ACL): sacrebleu's corpus BLEU with its default 13a tokenizer
  and exponential smoothing off, as `sacrebleu.corpus_bleu(hyps, [refs]).score` (0-100).
- chrF (Popovic 2015, WMT): character n-gram F-score, n <= 6, beta = 2, sacrebleu's defaults.
- ROUGE-L (Lin 2004, ACL workshop): F-measure of the longest common subsequence of words,
  rouge-score's `rougeL` with Porter stemming, averaged over answers (x 100).
"""

from __future__ import annotations


def corpus_overlap(hypotheses: list[str], references: list[str]) -> dict:
    """{"bleu", "chrf", "rouge_l"} on the 0-100 scale, each answer against its one reference."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} answers but {len(references)} references")
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
            "rouge_l": 100 * sum(rouge_l(hypotheses, references)) / max(len(hypotheses), 1)}


def rouge_l(hypotheses: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F-measure (0-1) of each answer against its reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)]


def sentence_chrf(hypotheses: list[str], references: list[str]) -> list[float]:
    """chrF (0-100) of each answer on its own, for samples.jsonl."""
    import sacrebleu

    return [sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hypotheses, references)]
