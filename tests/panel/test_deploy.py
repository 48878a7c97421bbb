"""deploy/: the systemd units, the nginx site and the environment examples are checked against
the code they start, the settings they feed and the tools that read them (systemd-analyze,
nginx, manage.py check --deploy), with the production values of the examples."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = DEPLOY / "systemd"
PANEL_ENV = DEPLOY / "berth.env.example"
HOST_ENV = DEPLOY / "host.env.example"
NGINX_SITE = DEPLOY / "nginx" / "berth.conf"
INSTALL_DIR = "/opt/berth"
PANEL_UNITS = ["berth-web.service", "berth-ws.service", "berth-panel-worker.service", "berth-beat.service"]
HOST_UNITS = ["berth-host-worker.service", "berth-agent.service"]
VAR_LINE = re.compile(r"^#?([A-Z][A-Z0-9_]*)=(.*)$")


def read_env(path: Path, *, commented: bool = False) -> dict[str, str]:
    """KEY=value lines (with ``commented``, also the ``#KEY=default`` ones)."""
    values = {}
    for line in path.read_text().splitlines():
        match = VAR_LINE.match(line)
        if match and (commented or not line.startswith("#")):
            values[match[1]] = match[2]
    return values


def unit(name: str) -> dict[str, list[str]]:
    """A unit's settings (a key given twice keeps both values, in order)."""
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def exec_argv(name: str, env: dict[str, str]) -> list[str]:
    """A unit's ExecStart as this checkout would run it: /opt/berth is the repository, systemd's
    ${VAR} come from ``env`` and %% is a literal %."""
    (line,) = unit(name)["ExecStart"]
    line = line.replace(INSTALL_DIR, str(REPO)).replace("%%", "%")
    line = re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: env[m[1]], line)
    return shlex.split(line)


def settings_variables() -> set[str]:
    text = (REPO / "panel" / "settings.py").read_text()
    return set(re.findall(r'env(?:\.(?:str|int|bool|list|float|db))?\(\s*"([A-Z][A-Z0-9_]*)"', text))


def host_variables() -> set[str]:
    names = set(re.findall(r'env(?:\.get)?\(\s*(?:env,\s*)?"([A-Z][A-Z0-9_]*)"',
                           (REPO / "workers" / "config.py").read_text()))
    names |= set(re.findall(r'_required\(env, "([A-Z][A-Z0-9_]*)"\)', (REPO / "workers" / "config.py").read_text()))
    for module in ("agent.py", "hostworker.py"):
        names |= set(re.findall(r'os\.environ\.get\(\s*"([A-Z][A-Z0-9_]*)"', (REPO / "workers" / module).read_text()))
    return names


@pytest.fixture
def panel_env(tmp_path) -> dict[str, str]:
    """berth.env.example as an operator fills it in: placeholders replaced by real secrets, the
    paths moved under tmp_path (this machine's /var/lib is not ours to write)."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    for key, value in read_env(PANEL_ENV).items():
        value = re.sub(r"CHANGE-ME[\w-]*", lambda _: secrets.token_urlsafe(64), value)
        env[key] = value.replace("/var/lib/berth", str(tmp_path / "var"))
    env["DJANGO_SETTINGS_MODULE"] = "panel.settings"
    return env


@pytest.fixture
def host_env(tmp_path) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    for key, value in read_env(HOST_ENV).items():
        env[key] = value.replace("CHANGE-ME-host-secret", secrets.token_hex(16)).replace(
            "/var/lib/berth", str(tmp_path / "var"))
    return env


def run(argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# --- environment examples --------------------------------------------------------------------

def test_panel_env_example_lists_every_setting_and_nothing_else():
    listed = set(read_env(PANEL_ENV, commented=True))
    read = settings_variables()
    assert "SECRET_KEY" in read and "BERTH_TRUSTED_PROXIES" in read  # the scan finds them
    assert read - listed == set(), "read by panel/settings.py but missing from berth.env.example"
    assert listed - read == set(), "in berth.env.example but read by nothing"


def test_host_env_example_lists_every_host_variable_and_nothing_else():
    listed = set(read_env(HOST_ENV, commented=True))
    read = host_variables()
    assert {"BERTH_HOST_NAME", "BERTH_GATEWAY", "BERTH_CGROUP_BASE", "BERTH_USAGE_SECONDS"} <= read
    # REDIS_URL is only a fallback for BERTH_REDIS_URL; the quiet-root switch is the unit's own.
    assert read - listed - {"REDIS_URL", "BERTH_QUIET_ROOT_WARNING"} == set()
    assert listed - read == set(), "in host.env.example but read by no host process"
    assert unit("berth-host-worker.service")["Environment"] == ["BERTH_QUIET_ROOT_WARNING=1"]


def test_host_env_example_is_what_host_add_prints():
    """Every variable `manage.py host add` prints for a host is in the example (the panel's
    host_environment is the source), so an operator can paste it."""
    text = (REPO / "panel" / "hosts" / "services.py").read_text()
    body = text[text.index("def host_environment"):text.index("def host_commands")]
    printed = set(re.findall(r'"(BERTH_[A-Z_]+)":', body))
    assert len(printed) >= 8
    assert printed <= set(read_env(HOST_ENV))


def test_every_line_of_the_examples_is_explained():
    """Each group of variables has a comment right above it."""
    for path in (PANEL_ENV, HOST_ENV):
        previous = "#"
        for line in path.read_text().splitlines():
            if VAR_LINE.match(line) and not line.startswith("#"):
                assert previous.startswith("#") or VAR_LINE.match(previous), f"{path.name}: {line}"
            previous = line or ""
            if not line:
                previous = ""


def test_the_examples_read_the_same_in_a_shell():
    """The guide sources berth.env in a shell (berth-manage): each value must come out as
    systemd reads it (no spaces, quotes or shell syntax in the values)."""
    for path in (PANEL_ENV, HOST_ENV):
        result = subprocess.run(["bash", "-c", f'set -a; . "{path}"; set +a; env -0'],
                                env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and not result.stderr, result.stderr
        seen = dict(item.split("=", 1) for item in result.stdout.split("\0") if "=" in item)
        expected = read_env(path)
        assert {key: seen.get(key) for key in expected} == expected


def test_the_examples_placeholders_are_refused_as_they_are(tmp_path):
    """Copied unchanged, berth.env does not start a production panel (its SECRET_KEY is a
    placeholder), so nobody runs with a published key."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **read_env(PANEL_ENV),
           "BERTH_VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "panel.settings"}
    result = run([str(REPO / ".venv/bin/python"), "manage.py", "check"], env)
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_check_deploy_is_clean_with_the_production_values(panel_env):
    result = run([str(REPO / ".venv/bin/python"), "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                 panel_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    # The production switches are really on (the checks would not notice a DEBUG override).
    probe = run([str(REPO / ".venv/bin/python"), "-c",
                 "import django; django.setup(); from django.conf import settings as s; "
                 "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, s.SECURE_PROXY_SSL_HEADER[0], "
                 "s.BERTH_TRUSTED_PROXIES, s.EMAIL_PORT, s.EMAIL_USE_TLS)"], panel_env)
    assert probe.stdout.split() == ["False", "True", "True", "HTTP_X_FORWARDED_PROTO", "['127.0.0.1']",
                                    "587", "True"], probe.stderr


def test_collectstatic_fills_the_root_nginx_serves(panel_env, tmp_path):
    result = run([str(REPO / ".venv/bin/python"), "manage.py", "collectstatic", "--noinput", "-v", "0"],
                 panel_env, timeout=300)
    assert result.returncode == 0, result.stderr
    alias = re.search(r"location /static/ \{\s*alias ([^;]+);", NGINX_SITE.read_text())[1]
    assert alias == read_env(PANEL_ENV)["BERTH_VAR_DIR"] + "/staticfiles/"
    root = tmp_path / "var" / "staticfiles"
    own = [p.relative_to(REPO / "static") for p in (REPO / "static").rglob("*") if p.is_file()]
    assert own and all((root / p).is_file() for p in own)
    assert (root / "admin" / "css" / "base.css").is_file()


# --- systemd units ---------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_is_silent(tmp_path):
    """No unknown key, no bad value, every command executable (from this checkout)."""
    names = sorted(p.name for p in UNITS.iterdir())
    assert set(PANEL_UNITS + HOST_UNITS + ["berth.target"]) == set(names)
    for name in names:
        (tmp_path / name).write_text((UNITS / name).read_text().replace(INSTALL_DIR, str(REPO)))
    result = subprocess.run(["systemd-analyze", "verify", *[str(tmp_path / n) for n in names]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), \
        result.stdout + result.stderr


def test_units_settings():
    for name in PANEL_UNITS:
        u = unit(name)
        assert u["User"] == ["berth"], name
        assert u["EnvironmentFile"] == ["/etc/berth/berth.env"], name
        assert u["Restart"] == ["on-failure"], name
        assert u["ReadWritePaths"] == [read_env(PANEL_ENV)["BERTH_VAR_DIR"]], name
        assert u["PartOf"] == ["berth.target"], name
        assert "postgresql.service" in u["After"][0] and "redis-server.service" in u["After"][0], name
    target = (UNITS / "berth.target").read_text()
    assert all(name in target for name in PANEL_UNITS)
    for name in HOST_UNITS:
        u = unit(name)
        assert u["User"] == ["root"], name
        assert u["EnvironmentFile"] == ["/etc/berth/host.env"], name
        assert u["Restart"] == ["on-failure"], name
        assert "libvirtd.service" in u["After"][0], name
        # A mount namespace of their own would hide the containers' mounts from each other.
        assert not {"ProtectSystem", "PrivateTmp", "ProtectHome", "ReadWritePaths", "PrivateDevices"} & set(u), name
    worker = unit("berth-host-worker.service")
    # Instances outlive a restart of the worker: only its main process is signalled.
    assert worker["KillMode"] == ["process"]
    # Their cgroups are not below the unit's (cgroup v2 would refuse the next start's process
    # into a cgroup that hands controllers down), but the controllers are offered from the root.
    assert "Delegate" not in worker
    assert worker["CPUAccounting"] == worker["MemoryAccounting"] == worker["TasksAccounting"] == ["yes"]
    assert worker["TasksMax"] == ["infinity"]
    # Long enough for a warm shutdown, restarted within the leases' grace.
    from workers import leases

    assert int(worker["TimeoutStopSec"][0]) >= 300
    assert int(worker["RestartSec"][0]) < leases.REAP_GRACE_SECONDS
    # One cgroup for the containers, outside both units, where the worker and the agent look.
    assert read_env(HOST_ENV)["BERTH_CGROUP_BASE"] == "/berth"


def test_the_units_commands_run(panel_env, host_env):
    """Every ExecStart, run from this checkout with the example's environment, finds its
    program, its app and its options (each in its own check mode)."""
    web = exec_argv("berth-web.service", panel_env)
    assert web[:4] == [str(REPO / ".venv/bin/granian"), "--interface", "wsgi", "panel.wsgi:application"]
    result = run([*web, "--help"], panel_env)  # click refuses an unknown option before --help
    assert result.returncode == 0, result.stderr
    result = run([str(REPO / ".venv/bin/python"), "-c", "from panel.wsgi import application; "
                  "print(type(application).__name__)"], panel_env)  # the app loads
    assert result.returncode == 0 and result.stdout.strip() == "WSGIHandler", result.stderr

    ws = exec_argv("berth-ws.service", panel_env)
    assert ws[:2] == [str(REPO / ".venv/bin/uvicorn"), "panel.asgi:application"]
    result = run([*ws, "--help"], panel_env)  # click refuses an unknown option before --help
    assert result.returncode == 0, result.stderr
    result = run([str(REPO / ".venv/bin/python"), "-c",
                  "import panel.asgi as a; from panel.realtime.routing import websocket_urlpatterns as r; "
                  "print(type(a.application).__name__, *[str(p.pattern) for p in r])"], panel_env)
    assert result.returncode == 0, result.stderr
    kind, *routes = result.stdout.split()
    assert kind == "ProtocolTypeRouter" and routes and all(r.startswith("ws/") for r in routes)

    for name, sub in (("berth-panel-worker.service", "worker"), ("berth-beat.service", "beat")):
        argv = exec_argv(name, panel_env)
        assert argv[:4] == [str(REPO / ".venv/bin/celery"), "-A", "panel", sub], name
        result = run([*argv, "--help"], panel_env)  # -A loads the app; the options are parsed
        assert result.returncode == 0, name + result.stdout + result.stderr
    worker = exec_argv("berth-panel-worker.service", panel_env)
    assert worker[worker.index("-Q") + 1] == "panel"

    argv = exec_argv("berth-host-worker.service", {**host_env})
    assert argv[:4] == [str(REPO / ".venv/bin/celery"), "-A", "workers.hostworker", "worker"]
    assert argv[argv.index("-Q") + 1] == f"host.{host_env['BERTH_HOST_NAME']}"
    # The same options as the commands `manage.py host add` prints.
    for option in ("--without-gossip", "--without-mingle", "--without-heartbeat"):
        assert option in argv
    result = run([*argv, "--help"], {**host_env, "BERTH_QUIET_ROOT_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr

    agent = exec_argv("berth-agent.service", host_env)
    assert agent == [str(REPO / ".venv/bin/python"), "-m", "workers.agent"]
    result = run([agent[0], "-c", "import workers.agent as a; assert callable(a.main); "
                  "from workers.config import load_host_settings as l; s = l(); "
                  "print(s.host.name, s.host.cgroup_base, s.host.gateway)"], host_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [host_env["BERTH_HOST_NAME"], host_env["BERTH_CGROUP_BASE"],
                                     host_env["BERTH_GATEWAY"]]


def test_container_driver_takes_the_cgroup_base_from_the_host(host_env):
    from workers.config import load_host_settings
    from workers.drivers.container.driver import ContainerDriver

    host = load_host_settings(host_env).host
    assert ContainerDriver(host).cgroup_base == "/berth"
    # Below the cgroup mount, in every hierarchy: where cgroup v2 or v1 is mounted.
    bases = ContainerDriver(host).layout.bases
    assert bases and all(base.name == "berth" and os.path.ismount(base.parent) for base in bases.values()), bases
    assert ContainerDriver(host, cgroup_base="/elsewhere").cgroup_base == "/elsewhere"
    assert load_host_settings({k: v for k, v in host_env.items() if k != "BERTH_CGROUP_BASE"}).host.cgroup_base is None


# --- nginx -----------------------------------------------------------------------------------

def test_nginx_site_matches_the_units():
    site = NGINX_SITE.read_text()
    upstreams = dict(re.findall(r"upstream (\w+) \{\s*server ([\d.:]+);", site))
    web = exec_argv("berth-web.service", {})
    ws = exec_argv("berth-ws.service", {})
    assert upstreams["berth_http"] == f"{web[web.index('--host') + 1]}:{web[web.index('--port') + 1]}"
    assert upstreams["berth_ws"] == f"{ws[ws.index('--host') + 1]}:{ws[ws.index('--port') + 1]}"
    # nginx is the trusted proxy the sign-in throttle reads X-Forwarded-For from.
    assert upstreams["berth_http"].split(":")[0] in read_env(PANEL_ENV)["BERTH_TRUSTED_PROXIES"].split(",")
    assert "return 301 https://$host$request_uri;" in site
    ws_block = site[site.index("location /ws/"):site.index("}", site.index("location /ws/"))]
    assert "proxy_pass http://berth_ws;" in ws_block and "Upgrade $http_upgrade" in ws_block
    # Every proxied location passes the headers the panel relies on.
    blocks = re.findall(r"location [^{]+\{[^}]*proxy_pass[^}]*\}", site)
    assert len(blocks) == 4
    for block in blocks:
        for header in ("Host $host", "X-Forwarded-For $proxy_add_x_forwarded_for", "X-Forwarded-Proto $scheme"):
            assert f"proxy_set_header {header};" in block, block
    # The import page's limit is above what the import accepts after unpacking is checked.
    staff = site[site.index("location /staff/images/"):]
    assert "client_max_body_size 16g;" in staff[:staff.index("}")]
    # Customers' ISOs: as big as the panel lets them be (its default), on the URL they go to.
    from django.urls import reverse

    iso = site[site.index(f"location = {reverse('iso-list')} "):]
    limit = int(re.search(r"client_max_body_size (\d+)g;", iso[:iso.index("}")])[1])
    assert limit * 1024 == int(read_env(PANEL_ENV)["BERTH_CUSTOMER_ISO_MAX_MIB"])


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (scripts/bootstrap.sh test)")
def test_nginx_accepts_the_site(tmp_path):
    conf = nginx_config(tmp_path)
    result = subprocess.run(["nginx", "-t", "-c", str(conf), "-p", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def nginx_config(tmp_path: Path, ports: tuple[int, int] | None = None) -> Path:
    """A main nginx.conf of our own that includes the site, with a self-signed certificate in
    place of the real one (and, with ``ports``, the listen ports moved to free ones)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=panel.example.com", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True, timeout=60)
    site = NGINX_SITE.read_text()
    site = site.replace("/etc/ssl/berth/fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace("/etc/ssl/berth/privkey.pem", str(tmp_path / "key.pem"))
    assert str(tmp_path / "cert.pem") in site and str(tmp_path / "key.pem") in site
    if ports:
        site = re.sub(r"listen (\[::\]:)?80;", f"listen 127.0.0.1:{ports[0]};", site, count=1)
        site = re.sub(r"\n\s*listen \[::\]:80;", "", site)
        site = re.sub(r"listen 443 ssl http2;", f"listen 127.0.0.1:{ports[1]} ssl http2;", site)
        site = re.sub(r"\n\s*listen \[::\]:443 ssl http2;", "", site)
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/tmp/body;
    proxy_temp_path {tmp_path}/tmp/proxy;
    fastcgi_temp_path {tmp_path}/tmp/fastcgi;
    uwsgi_temp_path {tmp_path}/tmp/uwsgi;
    scgi_temp_path {tmp_path}/tmp/scgi;
    include /etc/nginx/mime.types;
    include {tmp_path}/site.conf;
}}
""")
    return conf


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (scripts/bootstrap.sh test)")
def test_nginx_in_front_of_the_units_servers(panel_env, tmp_path, transactional_db):
    """The site, the web and WebSocket servers started from their units' commands (on free
    ports), against the test database: HTTP goes to HTTPS, the panel sees HTTPS behind the
    proxy (no redirect loop, secure cookies, HSTS), static files come from STATIC_ROOT
    through nginx alone, and /ws/ reaches the ASGI server with the upgrade."""
    import socket
    import ssl
    import time

    import httpx
    from django.db import connection
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    http_port, https_port, web_port, ws_port = (free_port() for _ in range(4))
    env = {**panel_env, "DATABASE_URL": f"postgres://root@/{connection.settings_dict['NAME']}",
           "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1"), "BERTH_DB_POOL": "0",
           "CONN_MAX_AGE": "0"}
    assert run([str(REPO / ".venv/bin/python"), "manage.py", "collectstatic", "--noinput", "-v", "0"],
               env, timeout=300).returncode == 0
    web = exec_argv("berth-web.service", env)
    web[web.index("--port") + 1] = str(web_port)
    ws = exec_argv("berth-ws.service", env)
    ws[ws.index("--port") + 1] = str(ws_port)
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    conf = nginx_config(nginx_dir, ports=(http_port, https_port))
    site = (nginx_dir / "site.conf").read_text()
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{web_port};")
    site = site.replace("server 127.0.0.1:8001;", f"server 127.0.0.1:{ws_port};")
    site = site.replace(read_env(PANEL_ENV)["BERTH_VAR_DIR"] + "/staticfiles/", f"{tmp_path}/var/staticfiles/")
    (nginx_dir / "site.conf").write_text(site)
    if os.geteuid() == 0:  # nginx's workers would be nobody, and tmp_path is root's alone
        conf.write_text("user root;\n" + conf.read_text())
    procs = []
    try:
        for name, argv in (("web", web), ("ws", ws), ("nginx", ["nginx", "-c", str(conf), "-p", str(nginx_dir)])):
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the child)
            procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        headers = {"Host": "panel.example.com"}
        client = httpx.Client(verify=False, timeout=10, headers=headers)
        deadline = time.monotonic() + 60
        while True:
            try:
                page = client.get(f"https://127.0.0.1:{https_port}/login/")
                if page.status_code != 502:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "\n".join(
                (tmp_path / f"{n}.log").read_text(errors="replace")[-2000:] for n in ("web", "ws", "nginx"))
            time.sleep(0.3)
        assert page.status_code == 200, page.text[:500]
        assert "Strict-Transport-Security" in page.headers
        assert any("Secure" in c for c in page.headers.get_list("set-cookie")), page.headers

        plain = client.get(f"http://127.0.0.1:{http_port}/login/?next=/x/")
        assert plain.status_code == 301
        assert plain.headers["location"] == "https://panel.example.com/login/?next=/x/"

        asset = next(p for p in (REPO / "static" / "js").iterdir() if p.suffix == ".js")
        static = client.get(f"https://127.0.0.1:{https_port}/static/js/{asset.name}")
        assert static.status_code == 200 and static.content == asset.read_bytes()
        assert static.headers["cache-control"] == "max-age=3600, public"

        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        # Anonymous: the events consumer refuses the handshake (403) — an answer only the ASGI
        # server gives; the WSGI server has no such URL.
        with pytest.raises(InvalidStatus) as refused:
            connect(f"wss://panel.example.com:{https_port}/ws/events/", ssl=context, open_timeout=10,
                    sock=socket.create_connection(("127.0.0.1", https_port)),
                    origin="https://panel.example.com")
        assert refused.value.response.status_code == 403
        # Signed in through the proxy (CSRF's HTTPS origin check passes: the panel knows it is
        # behind HTTPS), the same socket opens.
        from django.contrib.auth import get_user_model

        password = secrets.token_urlsafe(16)
        get_user_model().objects.create_user("deploy-staff", "deploy@example.com", password, is_staff=True)
        form = client.get(f"https://127.0.0.1:{https_port}/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)[1]
        signed_in = client.post(f"https://127.0.0.1:{https_port}/login/",
                                data={"username": "deploy-staff", "password": password, "csrfmiddlewaretoken": token},
                                headers={"Referer": "https://panel.example.com/login/",
                                         "Origin": "https://panel.example.com"})
        assert signed_in.status_code == 302, signed_in.text[:500]
        session = client.cookies["sessionid"]
        with connect(f"wss://panel.example.com:{https_port}/ws/events/", ssl=context, open_timeout=10,
                     sock=socket.create_connection(("127.0.0.1", https_port)),
                     origin="https://panel.example.com",
                     additional_headers={"Cookie": f"sessionid={session}"}) as socket_open:
            assert socket_open.response.status_code == 101
        web_log = (tmp_path / "web.log").read_text(errors="replace")
        assert "/login/" in web_log and "/static/" not in web_log and "/ws/" not in web_log
    finally:
        for proc in procs:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
