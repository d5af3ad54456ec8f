"""Settings out of range are refused, with their name, before anything starts."""

import math

import pytest

from embedder.core.config import SessionConfig
from embedder.core.errors import ConfigError
from embedder.engine.config import BatchingConfig, EngineConfig
from embedder.features import FeaturesConfig
from embedder.features.cli import main as features_main
from embedder.serving.cli import serve_main
from embedder.serving.config import ServerConfig


@pytest.mark.parametrize(
    "config, setting",
    [
        (BatchingConfig, {"max_batch_size": 0}),
        (BatchingConfig, {"inference_streams": -1}),
        (BatchingConfig, {"max_queue_delay_ms": -1}),
        (BatchingConfig, {"returning_wait_ms": math.nan}),
        (EngineConfig, {"preprocess_threads": 0}),
        (SessionConfig, {"intra_op_threads": -1}),
        (SessionConfig, {"max_batch_tokens": -1}),
        (ServerConfig, {"max_message_bytes": 0}),
        (ServerConfig, {"drain_seconds": -1}),
        (FeaturesConfig, {"workers": -1}),
        (FeaturesConfig, {"batch_size": -1}),
        (FeaturesConfig, {"intra_op_threads": -1}),
    ],
)
def test_out_of_range_settings_are_refused(config, setting):
    with pytest.raises(ConfigError, match=next(iter(setting))):
        config(**setting)


def test_command_lines_report_a_bad_setting_without_a_traceback(tmp_path, capsys):
    assert serve_main(["--repo", str(tmp_path), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be at least 1" in capsys.readouterr().err  # the flag's name
    args = ["export", "--images", str(tmp_path), "--model", "m", "--cache", str(tmp_path),
            "--batch-size", "-1"]  # fmt: skip
    assert features_main(args) == 2
    assert "--batch-size must be 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, complaint",
    [
        (["--paths", "list.txt", "--labels-from-folders"], "--labels-from-folders needs --images"),
        (["--images", "photos", "--label-column", "topic"], "--label-column need --texts"),
        (["--paths", "list.txt", "--text-column", "body"], "--label-column need --texts"),
    ],
)
def test_export_refuses_flags_that_its_input_would_ignore(flags, complaint, capsys):
    with pytest.raises(SystemExit) as exit_:
        features_main(["export", "--model", "m", *flags])
    assert exit_.value.code == 2 and complaint in capsys.readouterr().err


def test_serve_reports_a_taken_port_and_unreadable_tls_files(tiny_repo, tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        assert serve_main(["--repo", str(tiny_repo), "--address", address]) == 2
    assert f"cannot listen on {address}" in capsys.readouterr().err
    missing = ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
    assert serve_main(["--repo", str(tiny_repo), "--address", "127.0.0.1:0", *missing]) == 2
    assert "cannot read the TLS key or certificate" in capsys.readouterr().err


def test_automatic_thread_settings():
    import os

    from embedder.engine.config import thread_defaults

    cpu = SessionConfig(provider="cpu")
    cores = len(os.sched_getaffinity(0))
    auto = thread_defaults(EngineConfig(session=cpu))
    assert (auto.batching.inference_streams, auto.session.intra_op_threads) == (cores, 1)
    one = thread_defaults(EngineConfig(session=cpu, batching=BatchingConfig(inference_streams=1)))
    assert (one.batching.inference_streams, one.session.intra_op_threads) == (1, cores)
    fixed = thread_defaults(EngineConfig(session=SessionConfig("cpu", intra_op_threads=3)))
    assert fixed.session.intra_op_threads == 3


def test_log_levels_are_taken_in_any_case():
    """`--log-level debug` was a traceback (argparse's choices are case-sensitive)."""
    from embedder.serving.cli import serve_parser

    assert serve_parser().parse_args(["--log-level", "debug"]).log_level == "DEBUG"
    with pytest.raises(SystemExit):
        serve_parser().parse_args(["--log-level", "chatty"])
