"""Which ONNX Runtime providers a worker asks for, and how it notices a session that silently fell back."""

from __future__ import annotations

from types import SimpleNamespace

from workers.onnx import choose_providers, missing_required_provider, providers_by_model

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def _model(model_id: str, providers: list[str]):
    return SimpleNamespace(manifest=SimpleNamespace(id=model_id, version=1), providers=providers)


def test_choose_providers_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert choose_providers([CPU, CUDA, TRT]) == [TRT, CUDA, CPU]
    assert choose_providers([CPU]) == [CPU]


def test_choose_providers_keeps_requested_order_and_cpu_as_last_resort() -> None:
    assert choose_providers([CPU, CUDA, TRT], [CUDA]) == [CUDA, CPU]
    assert choose_providers([CPU], [CUDA]) == [CPU]  # asked for, not built in: only the CPU remains


def test_missing_required_provider_names_models_that_fell_back() -> None:
    got_cuda, fell_back = _model("dr", [CUDA, CPU]), _model("ct", [CPU])
    problem = missing_required_provider([got_cuda, fell_back], CUDA)
    assert problem is not None and "ct/1" in problem and "dr/1" not in problem


def test_missing_required_provider_none_when_all_got_it_or_nothing_required() -> None:
    assert missing_required_provider([_model("dr", [CUDA, CPU])], CUDA) is None
    assert missing_required_provider([_model("dr", [CPU])], None) is None
    assert missing_required_provider([], CUDA) is not None  # nothing loaded cannot satisfy a requirement


def test_providers_by_model_reports_what_each_session_got() -> None:
    assert providers_by_model([_model("dr", [CUDA, CPU]), _model("ct", [CPU])]) == {"dr/1": [CUDA, CPU],
                                                                                  "ct/1": [CPU]}


def test_worker_requiring_cuda_on_a_cpu_host_never_beats_and_stops(tmp_path, redis_server) -> None:
    """A real worker process: its sessions get the CPU only, so it refuses readiness and exits."""
    import redis

    from devkit.services import Service, service_env

    url = redis_server.url.rsplit("/", 1)[0] + "/7"  # a database of its own: no other worker's beat counts
    client = redis.Redis.from_url(url)
    client.flushdb()
    service = Service(tmp_path, service_env(tmp_path, url, MEDIMG_REQUIRE_PROVIDER=CUDA))
    worker = service.start_worker(queues="dr-grading")
    try:
        # The worker shuts itself down once warm-up shows the fallback, and says it failed (EX_CONFIG).
        assert worker.process.wait(120) == 78
        assert not list(client.scan_iter(match="medimg:worker-heartbeat:*"))
        assert "MEDIMG_REQUIRE_PROVIDER=CUDAExecutionProvider" in worker.log_path.read_text()
    finally:
        service.stop()
        client.close()
