"""Token accuracy: the share of predicted tokens equal to their reference, padding left out.

A local `evaluate` metric module, so that `evaluate.load(<path to this file>)` works offline
(`evaluate.load("accuracy")` fetches its script from the Hub).
"""

import datasets
import evaluate

_DESCRIPTION = "Share of positions where the predicted token id equals the reference id; -100 references are ignored."
_KWARGS = """
Args:
    predictions (list of int): predicted token ids.
    references (list of int): reference token ids; -100 marks positions to ignore.
Returns:
    accuracy (float): correct / counted positions (NaN when nothing is counted).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TokenAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        counted = correct = 0
        for prediction, reference in zip(predictions, references):
            if reference == -100:
                continue
            counted += 1
            correct += int(prediction == reference)
        return {"accuracy": correct / counted if counted else float("nan")}
