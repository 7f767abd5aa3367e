"""The copy contenders: the fio copy ceiling, `ringmirror copy` and the peers.

Every contender is a function (src, dst, size, sparse_src) -> shell command;
`prepare` says whether DST must exist (sparse, SIZE bytes) beforehand."""

import shlex

from .common import FIO_CONFIGS, ringmirror_bin

q = shlex.quote


def ceiling_cmd(src, new, size):
    """Exactly BENCHMARKS.md's ceiling command, as fio-configs/ceiling-copy.fio."""
    return f"SRC={q(str(src))} NEW={q(str(new))} SIZE={size} fio --output-format=json " \
           f"{q(str(FIO_CONFIGS / 'ceiling-copy.fio'))}"


READ_FLOOR = "fio read of SRC only"
NOT_COPIES = ("fio copy ceiling", READ_FLOOR)


def read_floor_cmd(src, size):
    """Reading the source alone, as the ceiling's reader does: no copy of a
    fully written image can take less time than this."""
    return f"fio --output-format=json --ioengine=io_uring --direct=1 --name=r " \
           f"--filename={q(str(src))} --rw=read --bs=1M --iodepth=32 --size={size}"


def contenders(rm_extra=()):
    rm = ringmirror_bin()
    c = {
        # name: (command template, DST pre-created sparse?, is a peer?)
        "fio copy ceiling": (lambda s, d, n, sp: ceiling_cmd(s, d, n), True, False),
        READ_FLOOR: (lambda s, d, n, sp: read_floor_cmd(s, n), False, False),
        "ringmirror copy": (lambda s, d, n, sp: f"{q(rm)} copy -q {q(str(s))} {q(str(d))}",
                            False, False),
        "cp && sync": (lambda s, d, n, sp: f"cp {q(str(s))} {q(str(d))} && sync", False, True),
        "nbdcopy && sync": (lambda s, d, n, sp: f"nbdcopy {q(str(s))} {q(str(d))} && sync",
                            False, True),
        "qemu-img convert -n io_uring,direct": (
            lambda s, d, n, sp: "qemu-img convert -W -m 16 -n "
            + ("--target-is-zero " if sp else "")
            + f"--image-opts driver=file,filename={q(str(s))},aio=io_uring,cache.direct=on "
            f"--target-image-opts driver=file,filename={q(str(d))},aio=io_uring,cache.direct=on",
            True, True),
        "qemu-img convert -t none -T none": (
            lambda s, d, n, sp: f"qemu-img convert -f raw -O raw -t none -T none -W -m 16 "
            f"{q(str(s))} {q(str(d))}", False, True),
        "dd direct bs=4M": (
            lambda s, d, n, sp: f"dd if={q(str(s))} of={q(str(d))} iflag=direct oflag=direct "
            f"bs=4M status=none", False, True),
    }
    for extra in rm_extra:
        c[f"ringmirror copy {extra}"] = (
            lambda s, d, n, sp, extra=extra: f"{q(rm)} copy -q {extra} {q(str(s))} {q(str(d))}",
            False, False)
    return c
