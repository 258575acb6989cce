"""E2BSandbox without network: the SDK's HTTP calls under respx, commands with a fake SDK.

``respx.mock(using="httpx")`` intercepts the control-plane API (create, kill,
metrics, timeout) and envd's /files endpoint. Commands go over Connect-RPC, which
respx cannot see, so labkit's command logic is tested with a fake ``AsyncSandbox``.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import traceback
from typing import Any, ClassVar

import e2b
import httpx
import pytest
import respx

from labkit.errors import (
    ConfigError,
    MissingDependency,
    SandboxAuthError,
    SandboxClosed,
    SandboxError,
    SandboxRateLimited,
)
from labkit.policies import Retry
from labkit.runner import run_parallel
from labkit.sandbox import CommandResult, E2BSandbox, ResourceSample, Sandbox, SandboxPool
from labkit.sandbox.cost import estimate_cost
from labkit.testing import FakeClock

pytestmark = pytest.mark.asyncio

KEY = "e2b_0123456789abcdef_test_key"
API = "https://api.e2b.app"
CREATED = {
    "sandboxID": "sbx-1",
    "templateID": "base",
    "clientID": "client",
    "envdVersion": "0.4.0",
    "envdAccessToken": "envd-token",
    "domain": "e2b.app",
}
NO_RETRIES = {"retries": 0}  # the SDK retries 429/503 itself by default; labkit's Retry decides


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2B_API_KEY", raising=False)


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": status, "message": message})


# -- the key ----------------------------------------------------------------------------


async def test_missing_key_names_the_variable() -> None:
    with pytest.raises(SandboxAuthError, match="E2B_API_KEY"):
        E2BSandbox()


async def test_key_from_environment_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_API_KEY", KEY)
    sb = E2BSandbox(template="my-template")
    assert isinstance(sb, Sandbox)
    assert KEY not in repr(sb) and KEY not in str(sb)
    with pytest.raises(TypeError):
        pickle.dumps(sb)
    for name in E2BSandbox.__slots__:
        assert KEY not in repr(getattr(sb, name))


async def test_key_is_refused_as_a_variable_for_commands() -> None:
    with pytest.raises(ValueError, match="E2B_API_KEY") as info:
        E2BSandbox(api_key=KEY, envs={"E2B_API_KEY": KEY})
    assert KEY not in str(info.value)


# -- the HTTP API under respx -----------------------------------------------------------


async def test_create_files_metrics_and_kill_over_http() -> None:
    with respx.mock(using="httpx", assert_all_called=True) as mock:
        create = mock.post(f"{API}/v2/sandboxes").mock(
            return_value=httpx.Response(201, json=CREATED)
        )
        metrics = mock.get(url__regex=rf"{API}/sandboxes/sbx-1/metrics.*").mock(
            return_value=httpx.Response(
                200,
                json=[
                    {
                        "timestamp": "2026-01-01T00:00:05Z",
                        "timestampUnix": 1767225605,
                        "cpuCount": 2,
                        "cpuUsedPct": 25.0,
                        "memUsed": 512 * 2**20,
                        "memTotal": 2048 * 2**20,
                        "memCache": 0,
                        "diskUsed": 0,
                        "diskTotal": 1,
                    }
                ],
            )
        )
        stored: dict[str, bytes] = {}

        def files(request: httpx.Request) -> httpx.Response:
            path = request.url.params["path"]
            if request.method == "POST":
                stored[path] = request.content
                return httpx.Response(200, json=[{"name": "x", "type": "file", "path": path}])
            if path not in stored:
                return error(404, "file not found")
            return httpx.Response(200, content=b"from the vm")

        mock.route(host="sandbox.e2b.app", path="/files").mock(side_effect=files)
        kill = mock.delete(f"{API}/sandboxes/sbx-1").mock(return_value=httpx.Response(204))

        sb = E2BSandbox(
            "my-template",
            timeout=600,
            api_key=KEY,
            envs={"MODE": "test"},
            metadata={"experiment": "e1"},
            sdk_options=NO_RETRIES,
            create_rate=None,
        )
        await sb.start()
        request = create.calls.last.request
        assert request.headers["X-API-KEY"] == KEY
        body = json.loads(request.content)
        assert body["templateID"] == "my-template" and body["timeout"] == 600
        assert body["envVars"] == {"MODE": "test"} and body["metadata"] == {"experiment": "e1"}
        assert sb.sandbox_id == "sbx-1" and sb.healthy
        assert KEY not in repr(sb)

        await sb.write_file("data/in.txt", "hello")
        (path,) = stored
        assert path == "/home/user/labkit/data/in.txt" and b"hello" in stored[path]
        assert await sb.read_file("data/in.txt") == b"from the vm"
        with pytest.raises(FileNotFoundError):
            await sb.read_file("missing.txt")

        sample = await sb.metrics()
        assert metrics.called
        assert sample == ResourceSample(
            time=1767225605.0, cpu=50.0, memory=512.0, memory_percent=25.0
        )

        await sb.close()
        await sb.close()
        assert kill.call_count == 1
        assert not sb.healthy
        with pytest.raises(SandboxClosed):
            await sb.run("true")


async def test_metrics_before_the_first_sample_reads_zero() -> None:
    with respx.mock(using="httpx") as mock:
        mock.post(f"{API}/v2/sandboxes").mock(return_value=httpx.Response(201, json=CREATED))
        mock.get(url__regex=rf"{API}/sandboxes/sbx-1/metrics.*").mock(
            return_value=httpx.Response(200, json=[])
        )
        mock.delete(f"{API}/sandboxes/sbx-1").mock(return_value=httpx.Response(204))
        async with E2BSandbox(api_key=KEY, sdk_options=NO_RETRIES, create_rate=None) as sb:
            sample = await sb.metrics()
        assert (sample.cpu, sample.memory, sample.memory_percent) == (0.0, 0.0, 0.0)


async def test_401_is_an_auth_error_that_names_the_variable() -> None:
    with respx.mock(using="httpx") as mock:
        mock.post(f"{API}/v2/sandboxes").mock(return_value=error(401, "Invalid API key"))
        sb = E2BSandbox(api_key=KEY, sdk_options=NO_RETRIES, create_rate=None)
        with pytest.raises(SandboxAuthError, match="E2B_API_KEY") as info:
            await sb.start()
    assert KEY not in str(info.value)
    assert isinstance(info.value.__cause__, e2b.AuthenticationException)
    assert sb.sandbox_id is None


@pytest.mark.parametrize("status", [429, 503])
async def test_429_and_503_are_rate_limited(status: int) -> None:
    with respx.mock(using="httpx") as mock:
        route = mock.post(f"{API}/v2/sandboxes").mock(return_value=error(status, "slow down"))
        sb = E2BSandbox(api_key=KEY, sdk_options=NO_RETRIES, create_rate=None)
        with pytest.raises(SandboxRateLimited, match=str(status)):
            await sb.start()
        assert route.call_count == 1


async def test_rate_limited_metrics_and_kill_map_too() -> None:
    with respx.mock(using="httpx") as mock:
        mock.post(f"{API}/v2/sandboxes").mock(return_value=httpx.Response(201, json=CREATED))
        mock.get(url__regex=rf"{API}/sandboxes/sbx-1/metrics.*").mock(
            return_value=error(429, "too many")
        )
        mock.delete(f"{API}/sandboxes/sbx-1").mock(return_value=error(401, "revoked"))
        sb = E2BSandbox(api_key=KEY, sdk_options=NO_RETRIES, create_rate=None)
        await sb.start()
        with pytest.raises(SandboxRateLimited):
            await sb.metrics()
        with pytest.raises(SandboxAuthError):
            await sb.close()


# -- commands and lifecycle with a fake SDK ---------------------------------------------


class FakeHandle:
    def __init__(self, outcome: Any, stdout: str = "", stderr: str = "") -> None:
        self.outcome = outcome
        self.stdout = stdout
        self.stderr = stderr
        self.killed = False
        self.pid = 42

    async def wait(self) -> Any:
        if isinstance(self.outcome, float):
            await asyncio.sleep(self.outcome)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    async def kill(self) -> bool:
        self.killed = True
        return True


class FakeCommands:
    def __init__(self) -> None:
        self.outcomes: list[Any] = []
        self.calls: list[dict[str, Any]] = []
        self.handles: list[FakeHandle] = []

    async def run(self, cmd: str, **options: Any) -> Any:
        self.calls.append({"cmd": cmd, **options})
        outcome = (
            self.outcomes.pop(0)
            if self.outcomes
            else e2b.CommandResult(stdout="", stderr="", exit_code=0, error=None)
        )
        if options.get("background"):
            self.handles.append(outcome if isinstance(outcome, FakeHandle) else FakeHandle(outcome))
            return self.handles[-1]
        return outcome


class FakeFiles:
    def __init__(self) -> None:
        self.dirs: list[str] = []

    async def make_dir(self, path: str) -> bool:
        self.dirs.append(path)
        return True


class FakeSDKSandbox:
    """Stands in for ``e2b.AsyncSandbox``: the class is the factory, like the SDK's."""

    created: ClassVar[list[FakeSDKSandbox]] = []
    create_errors: ClassVar[list[BaseException]] = []

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.sandbox_id = f"fake-sbx-{len(self.created)}"
        self.commands = FakeCommands()
        self.files = FakeFiles()
        self.timeouts: list[int] = []
        self.killed = 0
        self.running = True

    @classmethod
    async def create(cls, **options: Any) -> FakeSDKSandbox:
        if cls.create_errors:
            raise cls.create_errors.pop(0)
        made = cls(**options)
        cls.created.append(made)
        return made

    async def set_timeout(self, timeout: int) -> None:
        self.timeouts.append(timeout)

    async def is_running(self) -> bool:
        return self.running

    async def kill(self) -> bool:
        self.killed += 1
        return True


@pytest.fixture
def fake_sdk() -> type[FakeSDKSandbox]:
    FakeSDKSandbox.created = []
    FakeSDKSandbox.create_errors = []
    return FakeSDKSandbox


def make(fake_sdk: type[FakeSDKSandbox], **options: Any) -> E2BSandbox:
    options.setdefault("create_rate", None)  # pacing has its own test, on a fake clock
    return E2BSandbox(api_key=KEY, sdk_class=fake_sdk, **options)


async def test_run_maps_results_and_exits(fake_sdk: type[FakeSDKSandbox]) -> None:
    async with make(fake_sdk, workdir="/work") as sb:
        vm = fake_sdk.created[0]
        assert vm.options["api_key"] == KEY and vm.options["timeout"] == 300
        vm.commands.outcomes = [
            e2b.CommandResult(stdout="out\n", stderr="", exit_code=0, error=None),
            e2b.CommandExitException(
                stdout="", stderr="boom\n", exit_code=2, error="exit status 2"
            ),
        ]
        ok = await sb.run("echo out", env={"CUDA_VISIBLE_DEVICES": "0"}, timeout=5)
        assert (ok.exit_code, ok.stdout, ok.timed_out) == (0, "out\n", False)
        failed = await sb.run("false")
        assert isinstance(failed, CommandResult)
        assert (failed.exit_code, failed.stderr, failed.ok) == (2, "boom\n", False)
        first, second = vm.commands.calls
        assert first["cwd"] == "/work" and first["timeout"] == 5 and first["background"]
        assert first["envs"] == {"CUDA_VISIBLE_DEVICES": "0", "LABKIT_SANDBOX": sb.id}
        assert second["timeout"] == 0  # no limit
        assert vm.files.dirs == ["/work"]  # created once, by the first run
    assert vm.killed == 1


async def test_sdk_timeout_kills_the_command_and_reports_it(
    fake_sdk: type[FakeSDKSandbox],
) -> None:
    async with make(fake_sdk) as sb:
        vm = fake_sdk.created[0]
        vm.commands.outcomes = [
            FakeHandle(e2b.TimeoutException("deadline exceeded"), stdout="partial")
        ]
        result = await sb.run("sleep 100", timeout=1)
        assert result.timed_out and result.exit_code == 124 and result.stdout == "partial"
        assert vm.commands.handles[0].killed
        assert sb.healthy


async def test_cancelled_run_kills_the_command(fake_sdk: type[FakeSDKSandbox]) -> None:
    async with make(fake_sdk) as sb:
        vm = fake_sdk.created[0]
        vm.commands.outcomes = [FakeHandle(30.0)]
        task = asyncio.create_task(sb.run("sleep 30"))
        for _ in range(10):
            await asyncio.sleep(0)
        assert vm.commands.handles and not vm.commands.handles[0].killed
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert vm.commands.handles[0].killed


async def test_a_vanished_vm_is_unhealthy(fake_sdk: type[FakeSDKSandbox]) -> None:
    sb = make(fake_sdk)
    await sb.start()
    vm = fake_sdk.created[0]
    vm.commands.outcomes = [FakeHandle(e2b.SandboxNotRunningException("was not found"))]
    with pytest.raises(SandboxError, match="gone"):
        await sb.run("true")
    assert not sb.healthy
    await sb.close()
    assert vm.killed == 0  # nothing left to kill


async def test_reset_kills_marked_processes_cleans_and_renews(
    fake_sdk: type[FakeSDKSandbox],
) -> None:
    async with make(fake_sdk, timeout=900, workdir="/home/user/my dir") as sb:
        vm = fake_sdk.created[0]
        await sb.reset()
        (call,) = vm.commands.calls
        script = call["cmd"]
        assert f"LABKIT_SANDBOX={sb.id}" in script and "kill -9" in script
        assert "rm -rf -- '/home/user/my dir' && mkdir -p -- '/home/user/my dir'" in script
        assert "LABKIT_SANDBOX" not in str(call.get("envs"))  # the reset shell is not marked
        assert vm.timeouts == [900]
        await sb.run("true")
        assert vm.files.dirs == []  # reset already made the directory


async def test_file_paths_cannot_leave_the_workdir(fake_sdk: type[FakeSDKSandbox]) -> None:
    async with make(fake_sdk) as sb:
        for bad in ("/etc/passwd", "../x", "a/../../x"):
            with pytest.raises(ValueError):
                await sb.write_file(bad, "x")


async def test_concurrent_starts_create_one_vm(fake_sdk: type[FakeSDKSandbox]) -> None:
    sb = make(fake_sdk)
    await asyncio.gather(*(sb.start() for _ in range(5)))
    assert len(fake_sdk.created) == 1
    await sb.close()


async def test_rate_limited_start_is_retried_by_the_runner(
    fake_sdk: type[FakeSDKSandbox],
) -> None:
    fake_sdk.create_errors = [
        e2b.RateLimitException("429: Rate limit exceeded"),
        e2b.ServiceBusyException("503: busy"),
    ]

    async def job(_: int) -> int:
        async with make(fake_sdk) as sb:
            return (await sb.run("true")).exit_code

    retry = Retry(attempts=3, initial=0.0, jitter=0.0, retry_on=(SandboxRateLimited,))
    report = await run_parallel(job, [0], retry=retry)
    assert report.values == [0]
    assert report.results[0].attempts == 3
    fake_sdk.create_errors = [e2b.AuthenticationException("401")]
    report = await run_parallel(job, [0], retry=retry)
    assert isinstance(report.errors[0], SandboxAuthError)
    assert report.results[0].attempts == 1  # an auth error is not retried


async def test_pooled_e2b_sandboxes_are_reset_and_killed(
    fake_sdk: type[FakeSDKSandbox],
) -> None:
    async with SandboxPool(lambda: make(fake_sdk), max_size=1, prewarm=1) as pool:
        for _ in range(3):
            async with pool.session() as sb:
                await sb.run("work")
        assert pool.stats().hits == 3
        (vm,) = fake_sdk.created
        assert len(vm.timeouts) == 3  # each reset renewed the lifetime
    assert vm.killed == 1


async def test_without_the_sdk_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "e2b", None)  # makes `import e2b` fail
    sb = E2BSandbox(api_key=KEY)
    with pytest.raises(MissingDependency, match=r"labkit\[e2b\]"):
        await sb.start()


# -- hardening: the key in tracebacks, template resources, E2B's limits -----------------


def chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception reachable through ``__cause__``/``__context__``."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [error]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
    return seen


@pytest.mark.parametrize("status", [401, 429, 500])
async def test_the_key_is_in_no_traceback_local_of_the_whole_chain(status: int) -> None:
    with respx.mock(using="httpx") as mock:
        mock.post(f"{API}/v2/sandboxes").mock(return_value=error(status, f"failed {status}"))
        sb = E2BSandbox(api_key=KEY, sdk_options=NO_RETRIES, create_rate=None)
        with pytest.raises(SandboxError) as info:
            await sb.start()
    report = traceback.TracebackException.from_exception(info.value, capture_locals=True)
    text = "".join(report.format())
    assert KEY not in text
    assert str(status) in text or "E2B_API_KEY" in text  # the cause's message is kept
    for item in chain(info.value):
        frames = traceback.walk_tb(item.__traceback__)
        for frame, _line in frames:
            assert all(KEY not in repr(value) for value in frame.f_locals.values())
    cause = info.value.__cause__
    assert isinstance(cause, e2b.SandboxException | e2b.AuthenticationException)
    assert cause.__traceback__ is None  # a sanitised copy: never raised, no frames
    assert info.value.__context__ is None


async def test_memory_and_cpus_are_refused_pointing_at_templates() -> None:
    for option in ("memory_mb", "cpus"):
        with pytest.raises(ConfigError, match=rf"{option}=.*template") as info:
            E2BSandbox(api_key=KEY, **{option: 1})
        assert KEY not in str(info.value)
    with pytest.raises(ConfigError, match="create_rate"):
        E2BSandbox(api_key=KEY, create_rate=0)


async def test_creations_are_paced_process_wide(fake_sdk: type[FakeSDKSandbox]) -> None:
    clock = FakeClock(autojump=True)
    times: list[float] = []

    class Timed(fake_sdk):  # type: ignore[misc, valid-type]
        @classmethod
        async def create(cls, **options: Any) -> FakeSDKSandbox:
            times.append(clock.now())
            return await super().create(**options)

    hobby = [E2BSandbox(api_key=KEY, sdk_class=Timed, clock=clock) for _ in range(3)]
    await asyncio.gather(*(sb.start() for sb in hobby))
    assert times == [0.0, 1.0, 2.0]  # the default: 1 creation per second
    times.clear()
    pro = [E2BSandbox(api_key=KEY, sdk_class=Timed, clock=clock, create_rate=5) for _ in range(3)]
    start = clock.now()
    await asyncio.gather(*(sb.start() for sb in pro))
    assert [round(t - start, 6) for t in times] == [0.0, 0.2, 0.4]
    for sb in hobby + pro:
        await sb.close()


async def test_a_vm_deleted_early_is_replaced_at_session_start(
    fake_sdk: type[FakeSDKSandbox],
) -> None:
    async with SandboxPool(lambda: make(fake_sdk), max_size=1, prewarm=1) as pool:
        async with pool.session() as sb:
            first = sb
        fake_sdk.created[0].running = False  # E2B deleted it while it idled
        async with pool.session() as sb:
            assert sb is not first
            assert (await sb.run("true")).ok
        stats = pool.stats()
        assert (stats.vanished, stats.total_created) == (1, 2)
        assert not first.healthy


async def test_idle_vms_are_closed_after_max_idle_and_never_kept_alive(
    fake_sdk: type[FakeSDKSandbox],
) -> None:
    clock = FakeClock()
    pool = SandboxPool(lambda: make(fake_sdk), max_size=2, max_idle=30.0, clock=clock)
    async with pool.session():
        pass
    (vm,) = fake_sdk.created
    assert vm.timeouts == [300]  # renewed once, by the reset after the session
    clock.advance(29.0)
    await asyncio.sleep(0)
    assert vm.killed == 0
    clock.advance(2.0)
    for _ in range(10):
        await asyncio.sleep(0)
    assert vm.killed == 1 and vm.timeouts == [300]  # closed, never renewed while idle
    await pool.close()


async def test_pool_stats_show_dollars_at_estimate_cost_rates(
    fake_sdk: type[FakeSDKSandbox],
) -> None:
    clock = FakeClock()
    pool = SandboxPool(lambda: make(fake_sdk, template_vcpus=4, template_memory_gib=2),
                       max_size=2, max_idle=None, clock=clock)  # fmt: skip
    async with pool.session(), pool.session():
        clock.advance(100.0)
    expected = estimate_cost(instances=2, duration=100.0, vcpus=4, memory_gib=2)
    assert pool.stats().cost_usd == pytest.approx(expected)
    await pool.close()
    clock.advance(100.0)
    assert pool.stats().cost_usd == pytest.approx(expected)  # closed: no longer billed
    assert make(fake_sdk).price_per_second == pytest.approx(
        estimate_cost(instances=1, duration=1.0)
    )


async def test_output_past_max_output_is_cut_and_says_so(fake_sdk: type[FakeSDKSandbox]) -> None:
    async with make(fake_sdk, max_output=8) as sb:
        vm = fake_sdk.created[0]
        vm.commands.outcomes = [
            e2b.CommandResult(stdout="0123456789ab", stderr="ok", exit_code=0, error=None),
            e2b.CommandResult(stdout="0123456789ab", stderr="", exit_code=0, error=None),
            FakeHandle(e2b.TimeoutException("deadline exceeded"), stdout="é" * 10),
        ]
        cut = await sb.run("yes")
        assert (cut.stdout, cut.stderr, cut.truncated) == ("01234567", "ok", True)
        whole = await sb.run("yes", max_output=100)
        assert (whole.stdout, whole.truncated) == ("0123456789ab", False)
        late = await sb.run("yes", timeout=1)
        assert (late.stdout, late.truncated, late.timed_out) == ("é" * 4, True, True)
        with pytest.raises(ConfigError, match="cmd"):
            await sb.run("echo \0")
