"""/v1/jobs with a (temperature, alpha) sweep and the early-stopping knobs: lists are echoed in the
resolved spec, and an over-budget or malformed grid is a 422 before anything runs."""

from __future__ import annotations

import pytest

from kdcore.spec import MAX_SWEEP_EPOCHS, MAX_SWEEP_POINTS
from tests.factories import digits_job
from tests.utils import problem


def _hp(teacher_id: str, **hp) -> dict:
    body = digits_job(teacher_id)
    body["hyperparameters"].update(hp)
    return body


def test_lists_and_new_fields_are_echoed_in_the_resolved_spec(client, teacher_id):
    resp = client.post("/v1/jobs", json=_hp(teacher_id, temperature=[2, 4.5], alpha=[0.1, 0.5],
                                            early_stopping_patience=3, restore_best=True))
    assert resp.status_code == 201, resp.text
    hp = resp.json()["spec"]["hyperparameters"]
    assert hp["temperature"] == [2.0, 4.5] and hp["alpha"] == [0.1, 0.5]
    assert hp["early_stopping_patience"] == 3 and hp["restore_best"] is True


def test_defaults_of_the_new_fields_are_echoed(client, teacher_id):
    hp = client.post("/v1/jobs", json=digits_job(teacher_id)).json()["spec"]["hyperparameters"]
    assert hp["temperature"] == 4.0 and hp["early_stopping_patience"] is None and hp["restore_best"] is False


def test_over_budget_grid_is_422_naming_hyperparameters(client, teacher_id):
    temps = [1.0 + i for i in range(6)]
    alphas = [0.1 * i for i in range(6)]  # 36 points
    epochs = MAX_SWEEP_EPOCHS // len(temps * 6) + 1
    assert len(temps) * len(alphas) <= MAX_SWEEP_POINTS and 36 * epochs > MAX_SWEEP_EPOCHS
    err = problem(client.post("/v1/jobs", json=_hp(teacher_id, temperature=temps, alpha=alphas, epochs=epochs)), 422)
    assert err["errors"][0]["field"] == "hyperparameters", err
    assert "MAX_SWEEP_EPOCHS" in err["errors"][0]["reason"]
    assert client.get("/v1/jobs").json()["data"] == []


@pytest.mark.parametrize("hp, field", [
    ({"temperature": []}, "hyperparameters.temperature"),
    ({"temperature": [2, 2]}, "hyperparameters.temperature"),
    ({"temperature": [2, 0]}, "hyperparameters.temperature"),
    ({"alpha": [0.5, 1.5]}, "hyperparameters.alpha"),
    ({"alpha": ["a"]}, "hyperparameters.alpha"),
    ({"alpha": [True]}, "hyperparameters.alpha"),
    ({"temperature": "hot"}, "hyperparameters.temperature"),
    ({"early_stopping_patience": 0}, "hyperparameters.early_stopping_patience"),
    ({"temperature": [float(t) for t in range(1, 8)], "alpha": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}, "hyperparameters"),
    ({"repeats": 0}, "hyperparameters.repeats"),
    ({"repeats": 11}, "hyperparameters.repeats"),
    ({"repeats": "2"}, "hyperparameters.repeats"),
    ({"repeats": 2.0}, "hyperparameters.repeats"),
    ({"repeats": 10, "epochs": 201}, "hyperparameters"),  # 10 runs x 201 epochs > MAX_SWEEP_EPOCHS
])
def test_malformed_sweeps_are_422_naming_the_field(client, teacher_id, hp, field):
    err = problem(client.post("/v1/jobs", json=_hp(teacher_id, **hp)), 422)
    assert err["errors"][0]["field"] == field, err
