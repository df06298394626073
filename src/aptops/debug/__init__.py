"""The debug stage: gradient, activation and memory monitors, profiling, diagnosis, NaN hunting, reports.

Each monitor works on its own around any ``torch.nn.Module``; :class:`TrainingDebugger` combines them as one
plugin for the Hugging Face ``Trainer`` (``debug_callback``), and :func:`generate_full_report` turns what
they saw into one self-contained HTML page, a JSON file and a PDF.
"""

from aptops.debug.activations import (
    ActivationMonitor,
    detect_dead_neurons,
    detect_saturated_neurons,
    monitor_activations,
)
from aptops.debug.callback import DebugConfig, TrainingDebugger, debug_callback
from aptops.debug.diagnose import DiagnoseConfig, Diagnosis, diagnose_history, diagnose_training
from aptops.debug.findings import Finding
from aptops.debug.gradients import GradientMonitor, detect_gradient_anomalies, monitor_gradients
from aptops.debug.memory import MemoryTracker, detect_memory_leaks, gpu_snapshot, track_memory
from aptops.debug.nan import NanInfDetector, NonFiniteError, detect_nan_inf
from aptops.debug.profiling import profile_model, profile_section, transformer_flops
from aptops.debug.recipe import DebugStageConfig, debug_model
from aptops.debug.visualize import generate_full_report, visualize_activations, visualize_gradients

__all__ = [
    "ActivationMonitor", "DebugConfig", "DebugStageConfig", "DiagnoseConfig", "Diagnosis", "Finding", "GradientMonitor", "MemoryTracker",
    "NanInfDetector", "NonFiniteError", "TrainingDebugger", "debug_callback", "debug_model", "detect_dead_neurons",
    "detect_gradient_anomalies", "detect_memory_leaks", "detect_nan_inf", "detect_saturated_neurons",
    "diagnose_history", "diagnose_training", "generate_full_report", "gpu_snapshot", "monitor_activations",
    "monitor_gradients", "profile_model", "profile_section", "track_memory", "transformer_flops",
    "visualize_activations", "visualize_gradients",
]
