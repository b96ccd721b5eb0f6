"""The task a config asks for: the trainer's one door into data/ (classification or text)."""


def build_task(cfg, rank, world):
    if cfg.data.name in ("text", "addition"):
        from .text import build_text_task
        return build_text_task(cfg, rank, world)
    from .images import ClassificationTask
    return ClassificationTask(cfg, rank, world)


def check_data(cfg):
    """What the task would refuse about its data files, checked without keeping the data: a
    launcher runs this once before it starts ranks or queues a job."""
    d = cfg.data
    if d.name == "mnist":
        from .images import load_mnist
        load_mnist(d.path, header_only=True)
    elif d.name in ("text", "addition"):
        from .text import build_text_task
        build_text_task(cfg, 0, 1)
