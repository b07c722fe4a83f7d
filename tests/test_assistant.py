import itertools

import pytest
import torch

from tas_lite import assistant, models

TINY_FAMILIES = {name: models.tiny_family(name) for name in models.TINY}
HETERO_TINY = [(t, s) for t, s in itertools.permutations(models.TINY, 2) if TINY_FAMILIES[t] != TINY_FAMILIES[s]]
# (teacher, student) pairs of the paper's CIFAR-100 table (TAS, arXiv 2410.12342)
PAPER_PAIRS = [("swin_tiny_patch4_window7_224", "resnet18"), ("vit_small_patch16_224", "resnet18"),
               ("vit_small_patch16_224", "mobilenetv2_100"), ("convnext_tiny", "deit_tiny_patch16_224"),
               ("convnext_tiny", "resmlp_12_224")]


def _pair(t, s, img_size=32, classes=10):
    torch.manual_seed(0)
    return (models.create(t, num_classes=classes, img_size=img_size),
            models.create(s, num_classes=classes, img_size=img_size))


def _forward_backward(teacher, student, img_size, batch=2):
    a = assistant.build(teacher, student, img_size=img_size)
    x = torch.randn(batch, 3, img_size, img_size)
    logits, feat = a(x)
    (logits.square().mean() + feat.square().mean()).backward()
    return a, logits, feat


@pytest.mark.parametrize("teacher_name, student_name", HETERO_TINY)
def test_every_heterogeneous_tiny_pair_joins(teacher_name, student_name):
    teacher, student = _pair(teacher_name, student_name)
    a, logits, feat = _forward_backward(teacher, student, 32)
    assert logits.shape == (2, 10) and feat.ndim == 2
    assert all(p.grad is None for p in teacher.parameters())  # frozen teacher parts get no gradient
    assert all(p.requires_grad for p in teacher.parameters())  # ... and nothing of the teacher was changed
    assert all(p.grad is not None for p in a.l2g.parameters())
    front_family = models.family(teacher if a.front_owner == "teacher" else student)
    assert front_family == "cnn" or "cnn" not in (TINY_FAMILIES[teacher_name], TINY_FAMILIES[student_name])
    share = assistant.budget(a, student)
    print(f"{teacher_name} -> {student_name}: new {share:.1%} of the student")
    assert share < 0.15


@pytest.mark.parametrize("teacher_name, student_name", PAPER_PAIRS)
def test_paper_pairs_join_at_224_within_budget(teacher_name, student_name):
    teacher, student = _pair(teacher_name, student_name, img_size=224, classes=100)
    a, logits, _ = _forward_backward(teacher, student, 224, batch=1)
    assert logits.shape == (1, 100)
    share = assistant.budget(a, student)
    print(f"{teacher_name} -> {student_name}: L2G {sum(p.numel() for p in a.new_parameters())} params, "
          f"{share:.1%} of the student")
    assert share < 0.10
    assert a.front_owner == ("teacher" if models.family(teacher) == "cnn" else "student")


def test_shared_parts_are_the_same_objects_and_the_assistant_owns_only_what_it_runs():
    teacher, student = _pair("tiny_vit", "tiny_resnet")  # CNN student: student front, teacher back
    a = assistant.build(teacher, student)
    s_view, t_view = models.stages(student), models.stages(teacher)
    assert all(x is y for x, y in zip(a.front_stages, s_view.stages[:3]))
    assert a.back_stage[0] is t_view.stages[3][0]
    shared = {id(p) for p in a.parameters()}
    assert {id(p) for p in student.layer1.parameters()} <= shared
    assert {id(p) for p in teacher.blocks[-1].parameters()} <= shared
    assert not {id(p) for p in teacher.blocks[0].parameters()} & shared, "teacher blocks it never runs"
    assert not {id(p) for p in student.layer4.parameters()} & shared, "student stage 4 is not in the assistant"
    n_new = sum(p.numel() for p in a.new_parameters())
    s_parts, t_parts = s_view.part_sizes(), t_view.part_sizes()
    runs = s_parts["stem"] + s_parts["stage1"] + s_parts["stage2"] + s_parts["stage3"] + t_parts["stage4"] + t_parts["head"]
    assert models.count_parameters(a) == runs + n_new


def test_cnn_teacher_gives_its_front_and_the_student_its_back():
    teacher, student = _pair("tiny_convnext", "tiny_vit")
    a = assistant.build(teacher, student)
    assert (a.front_owner, a.back_owner) == ("teacher", "student")
    assert a.back_stage[0] is student.blocks[-1]  # 6 blocks: stage 4 is the last one
    _, logits, _ = _forward_backward(teacher, student, 32)
    assert student.blocks[-1].attn.qkv.weight.grad is not None  # the student's stage 4 learns in the assistant
    assert student.blocks[0].attn.qkv.weight.grad is None  # its stages 1-3 are not in the assistant


def test_forward_from_stage3_reuses_the_owner_activation():
    teacher, student = _pair("tiny_mixer", "tiny_mobilenetv2")
    a = assistant.build(teacher, student).eval()
    student.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        s3 = models.stages(student).features(x)[2]
        assert torch.equal(a.forward_from_stage3(s3)[0], a(x)[0])


def test_unfrozen_teacher_parts_learn():
    teacher, student = _pair("tiny_vit", "tiny_resnet")
    a = assistant.build(teacher, student, freeze_teacher=False)
    logits, _ = a(torch.randn(2, 3, 32, 32))
    logits.sum().backward()
    assert teacher.blocks[-1].attn.qkv.weight.grad is not None


def test_frozen_teacher_parts_stay_in_eval_mode():
    teacher, student = _pair("tiny_swin", "tiny_resnet")
    a = assistant.build(teacher, student).train()
    assert not a.back_stage.training and not a.head.training and a.l2g.training and a.front_stages.training


def test_swin_receiver_attends_in_its_windows():
    teacher, student = _pair("tiny_swin", "tiny_resnet")
    a = assistant.build(teacher, student)
    assert a.l2g.attn.window == teacher.layers[3].blocks[0].window_size[0]
    assert not a.l2g.patchify or a.l2g.embed.stride == (2, 2)  # 8x8 CNN map -> 4x4 Swin grid


def test_cnn_to_cnn_uses_a_plain_adapter():
    teacher, student = _pair("tiny_convnext", "tiny_resnet")
    assert assistant.build(teacher, student).l2g.attn is None


@pytest.mark.parametrize("teacher_name, student_name, freeze", [
    ("tiny_convnext", "tiny_vit", True), ("tiny_vit", "tiny_resnet", True), ("tiny_mixer", "tiny_resnet", False),
    ("tiny_swin", "tiny_mobilenetv2", True), ("tiny_convnext", "tiny_resnet", True)])
def test_parts_table_accounts_for_every_parameter(teacher_name, student_name, freeze):
    teacher, student = _pair(teacher_name, student_name)
    a = assistant.build(teacher, student, freeze_teacher=freeze)
    rows = {p.name: p for p in a.parts()}
    assert sum(p.parameters for p in rows.values()) == models.count_parameters(a)
    groups = a.parameter_groups()
    assert sum(groups.values()) == models.count_parameters(a)
    assert groups["new"] == rows["L2G"].parameters == sum(p.numel() for p in a.new_parameters())
    trained = sum(p.parameters for p in rows.values() if p.trainable and p.source != "new")
    assert groups["shared, trained"] == trained
    assert groups["shared, trained"] + groups["new"] == sum(p.numel() for p in a.trainable_parameters())
    if not freeze:
        assert groups["shared, frozen"] == 0


def test_parts_table_names_owners():
    teacher, student = _pair("tiny_convnext", "tiny_vit")
    rows = {p.name: p for p in assistant.build(teacher, student).parts()}
    assert all(isinstance(p, assistant.PartSummary) for p in rows.values())  # a row; stages.Part is the module
    assert not hasattr(assistant, "Part")
    assert rows["L2G"].source == "new" and rows["stage 4"].source == "student" and rows["stage 1"].source == "teacher"
    assert not rows["stage 1"].trainable and rows["stage 4"].trainable
    view_t, view_s = models.stages(teacher).part_sizes(), models.stages(student).part_sizes()
    assert rows["stage 3"].parameters == view_t["stage3"] and rows["head"].parameters == view_s["head"]


def test_build_rejects_what_it_cannot_join():
    teacher, student = _pair("tiny_vit", "tiny_resnet")
    other = models.create("tiny_resnet", num_classes=5)
    with pytest.raises(ValueError, match="10 classes and a student with 5"):
        assistant.build(teacher, other)
    with pytest.raises(ValueError, match="img_size=64"):
        assistant.build(teacher, student, img_size=64)  # the ViT was built for 32 px
    with pytest.raises(ValueError, match="expects a 8x8 map"):
        assistant.L2G(64, 8, 32, 8)(torch.randn(1, 64, 4, 4))
