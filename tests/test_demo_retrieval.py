"""open_clip_c2lip.demo.retrieval: recall@1 against naive loops."""
import pytest
import torch

from open_clip_c2lip.demo.retrieval import recall_at_k


def _naive_recall(similarity, groups):
    n = len(groups)
    i2t = sum(groups[max(range(n), key=lambda j: similarity[i][j])] == groups[i] for i in range(n)) / n
    t2i = sum(groups[max(range(n), key=lambda i: similarity[i][j])] == groups[j] for j in range(n)) / n
    return i2t, t2i


def test_recall_matches_naive_loops():
    gen = torch.Generator().manual_seed(0)
    for trial in range(5):
        similarity = torch.randn(30, 30, generator=gen)
        similarity += 2.0 * torch.eye(30) * (trial / 4)
        groups = [i % 25 for i in range(30)]  # a few duplicated captions
        got = recall_at_k(similarity, groups, k=1)
        i2t, t2i = _naive_recall(similarity.tolist(), groups)
        assert got["image_to_text_R@1"] == pytest.approx(i2t)
        assert got["text_to_image_R@1"] == pytest.approx(t2i)
    with pytest.raises(ValueError):
        recall_at_k(torch.zeros(3, 4), [0, 1, 2])
