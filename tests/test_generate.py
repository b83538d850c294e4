import numpy as np
import pytest

from wsseg.pseudo_labels.generate import class_precision, unreliable_classes


def test_class_precision_and_unreliable_classes():
    # rows: ground truth, columns: pseudo label
    cm = np.array([[8, 6, 0],
                   [2, 4, 0],
                   [0, 0, 0]])
    assert class_precision(cm) == [pytest.approx(0.8), pytest.approx(0.4), None]
    assert unreliable_classes(cm, 0.5) == [1]
    assert unreliable_classes(cm, 0.3) == []
