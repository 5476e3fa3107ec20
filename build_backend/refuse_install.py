"""A PEP 517 build backend that refuses to build: schp-segformer runs from its checkout.

Its packages have generic top-level names (`networks`, `datasets`, `utils`, `inference`); installed
into site-packages, `datasets` would shadow Hugging Face's `datasets` and `utils` any other
`utils`. So `pip install .` stops here with one message instead of installing them.
"""

MESSAGE = (
    "schp-segformer is not installable: it runs from its checkout. Run "
    "`pip install -r requirements.txt` in the repository, then the scripts from its root "
    "(python train.py ..., python extract.py ...); see README.md, section 'Two commands'."
)


def _refuse(*args, **kwargs):
    raise SystemExit(MESSAGE)


get_requires_for_build_wheel = _refuse
get_requires_for_build_sdist = _refuse
get_requires_for_build_editable = _refuse
prepare_metadata_for_build_wheel = _refuse
prepare_metadata_for_build_editable = _refuse
build_wheel = _refuse
build_sdist = _refuse
build_editable = _refuse
