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
        load_mnist(d.path, header_only=True, n_classes=d.n_classes)
    elif d.name in ("text", "addition"):
        from .text import build_text_task
        build_text_task(cfg, 0, 1)


def data_bytes(cfg):
    """Host bytes the data will take while it is loaded and split, known before reading it
    (float64 features and about three copies of them; text as characters and int64 ids)."""
    import os
    d = cfg.data
    if d.name == "synthetic":
        return 3 * d.n_samples * d.n_features * 8
    try:
        if d.name == "text":
            return 20 * os.stat(d.path).st_size
        if d.name == "mnist":
            from .images import MNIST_FILES, find_mnist_file, stored_size
            return 3 * 8 * sum(stored_size(find_mnist_file(d.path, MNIST_FILES[k]))
                               for k in ("train_images", "test_images"))
    except Exception:          # a missing or bad file is said when it is read, in its own words
        return 0
    return 0


def dims(cfg):
    """(inputs, outputs) of the model the data asks for, without loading it: features and classes,
    or the vocabulary of a text (which reads the text, as check_data does)."""
    d = cfg.data
    if d.name in ("text", "addition"):
        from .text import build_text_task
        task = build_text_task(cfg, 0, 1)
        return task.d_in, task.n_out
    if d.name == "digits":
        return 64, 10
    if d.name == "mnist":                # the image shape from the header (check_data ran already)
        import math
        import os
        from .images import MNIST_FILES, find_mnist_file, read_idx
        try:
            _, shape = read_idx(find_mnist_file(os.path.expanduser(d.path), MNIST_FILES["train_images"]), True)
            return math.prod(shape[1:]), d.n_classes
        except Exception:    # said in its own words when the data is read
            return 28 * 28, d.n_classes
    return d.n_features, d.n_classes
