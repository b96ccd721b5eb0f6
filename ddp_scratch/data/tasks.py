"""The task a config asks for: the trainer's one door into data/ (classification or text)."""


def build_task(cfg, rank, world):
    if cfg.data.name in ("text", "addition"):
        from .text import build_text_task
        return build_text_task(cfg, rank, world)
    from .images import ClassificationTask
    return ClassificationTask(cfg, rank, world)
