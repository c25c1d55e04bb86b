"""Raw logs to event sequences: presets, Drain3 template mining, partitioning, and accuracy."""

from flexlog.parsing.accuracy import evaluate_preset, grouping_accuracy, grouping_report
from flexlog.parsing.miner import (
    MAX_LOG_LINE_BYTES,
    ParsedLine,
    TemplateParser,
    event_key,
    read_log_lines,
)
from flexlog.parsing.partition import by_session, fixed_window, partition, sliding_window
from flexlog.parsing.presets import COMMON_MASKS, PRESETS, Preset, compile_log_format, get_preset
from flexlog.parsing.regex import LinearMask, PatternError, compile_linear

__all__ = [
    "COMMON_MASKS",
    "MAX_LOG_LINE_BYTES",
    "PRESETS",
    "LinearMask",
    "ParsedLine",
    "PatternError",
    "Preset",
    "TemplateParser",
    "by_session",
    "compile_linear",
    "compile_log_format",
    "evaluate_preset",
    "event_key",
    "fixed_window",
    "get_preset",
    "grouping_accuracy",
    "grouping_report",
    "partition",
    "read_log_lines",
    "sliding_window",
]
