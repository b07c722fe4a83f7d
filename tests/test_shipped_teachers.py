"""The teachers that ship with the course: the cpu profile finds every model it needs among them (a cold start
never trains one), each verifies against its sidecar, each was made by today's recipe, and together they stay
small enough to carry in the repository."""

import json

import pytest

from tas_lite import checkpoints, models, profiles, teachers

RETRAIN = "python -m tas_lite teachers --profile cpu"
LIMIT_BYTES = 10_000_000


def expected_file(name: str, settings: profiles.Settings) -> str:
    spec = teachers.cache_spec(name, settings.dataset, img_size=settings.img_size, epochs=settings.teacher_epochs,
                               batch_size=settings.teacher_batch_size, max_steps=settings.teacher_max_steps,
                               pretrained=settings.pretrained)
    return teachers.cache_path(spec, 0).name


def test_the_cpu_profile_finds_every_model_it_needs_among_the_shipped_teachers():
    cpu = profiles.resolve("cpu")
    assert cpu.analysis_epochs == cpu.teacher_epochs, "notebooks 01-03 must look inside the shipped teachers"
    assert {"tiny_convnext", "tiny_vit", "tiny_mixer"} <= set(teachers.course_models(cpu))
    missing = [name for name in teachers.course_models(cpu) if not (teachers.shipped_dir() / expected_file(name, cpu)).is_file()]
    assert not missing, (f"stale: no shipped teacher matches today's recipe for {missing} (a changed teacher recipe, "
                         f"augmentation or profile value); make them again with: {RETRAIN}")


def test_every_shipped_teacher_verifies_and_matches_todays_recipe():
    files = sorted(teachers.shipped_dir().glob("*.safetensors"))
    assert files, f"no shipped teachers in {teachers.shipped_dir()}; make them with: {RETRAIN}"
    for path in files:
        meta = json.loads(path.with_suffix(".json").read_text())
        spec = meta["recipe"]
        today = teachers.cache_spec(spec["name"], spec["dataset"], img_size=spec["img_size"], epochs=spec["epochs"],
                                    batch_size=spec["batch_size"], max_steps=spec["max_steps"],
                                    pretrained=spec["pretrained"])
        assert spec == today, f"stale: {path.name} was made by another recipe; make it again with: {RETRAIN}"
        model = models.create(spec["name"], num_classes=10, img_size=spec["img_size"])
        checkpoints.load_weights(model, path)  # sha256 and shapes checked; a damaged file raises CorruptFile
        assert 0 < meta["test_acc"] <= 100 and meta["command"].startswith("python -m tas_lite teachers")


def test_the_shipped_teachers_stay_within_ten_megabytes():
    total = sum(p.stat().st_size for p in teachers.shipped_dir().iterdir() if p.is_file())
    assert 0 < total <= LIMIT_BYTES, f"shipped teachers take {total:,} bytes; the limit is {LIMIT_BYTES:,}"


def test_a_cold_start_loads_shipped_teachers_and_never_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path))  # an empty cache, as on a fresh clone
    monkeypatch.setattr(teachers, "_train", lambda *a, **k: pytest.fail("a shipped teacher must not be trained"))
    cpu = profiles.resolve("cpu")
    teacher = teachers.from_settings(cpu.teacher, cpu, progress=False)
    assert teacher.tas_lite_info["test_acc"] > 0 and not teacher.training
    assert not list((tmp_path / "checkpoints").glob("*.safetensors")), "nothing is copied into the cache"
