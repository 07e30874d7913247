"""The aggregation server's one public port: nginx (Debian's package), run unprivileged from a configuration fedrt
writes into the state folder. It terminates TLS with the server certificate and forwards by path to the SuperLink
on loopback: ``/v1/fleet/`` (the hospitals' nodes) for anyone, ``/v1/control/`` (register, list, submit, stop...)
only for an operator's client certificate from the federation's CA (``fedrt certs operator``), and nothing else:
the Runtime API and every other path answer 404.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from protocols.errors import ConfigError, DeploymentError
from protocols.files import atomic_write
from server.certs import OPERATOR_UNIT, ServerFiles
from server.superlink import SuperLinkSettings
from wire.control import REFUSAL_HEADER
from wire.processes import start_process

NGINX_HOW = "apt-get install nginx (Debian's package; fedrt runs it itself, the system's nginx service can stay off)"
_UNSAFE = re.compile(r'["$\\\x00-\x1f]')  # characters a quoted nginx string would not carry as they are

CONFIG = """\
# Written by `fedrt server start` at every start: change fedrt's settings, not this file.
daemon off;
worker_processes 1;
pid "{folder}/nginx.pid";
error_log "{folder}/error.log" notice;
events {{ worker_connections 1024; }}
http {{
    server_tokens off;
    default_type text/plain;
    client_body_temp_path "{folder}/tmp/body";
    proxy_temp_path "{folder}/tmp/proxy";
    fastcgi_temp_path "{folder}/tmp/fastcgi";
    uwsgi_temp_path "{folder}/tmp/uwsgi";
    scgi_temp_path "{folder}/tmp/scgi";
    access_log off;
    log_format operator '$time_iso8601 $remote_addr "$ssl_client_s_dn" $request_method $uri $status '
                        '$request_time';

    # Model weights travel here: no size limit, streamed through without buffering to disk.
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    # The SuperLink presents the server certificate on loopback too ("localhost" is one of its names).
    proxy_ssl_trusted_certificate "{ca}";
    proxy_ssl_verify on;
    proxy_ssl_name localhost;
    proxy_ssl_session_reuse on;

    map $ssl_client_s_dn $fedrt_operator_unit {{
        default 0;
        "~(^|,)OU={unit}(,|$)" 1;
    }}
    map "$ssl_client_verify $fedrt_operator_unit" $fedrt_refusal {{
        "SUCCESS 1" "";
        "NONE 0" "no operator credential was presented";
        "~^SUCCESS " "the client certificate is not an operator's";
        default "the operator credential was not accepted ($ssl_client_verify)";
    }}

    upstream fedrt_superlink {{
        server {upstream};
        keepalive 8;
        keepalive_timeout 4s;  # below the SuperLink's own 5 s, so it never closes a connection nginx reuses
    }}

    server {{
        listen {listen} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate "{server_cert}";
        ssl_certificate_key "{server_key}";
        # Ask every client for a certificate, require none: nodes have none (they sign with their key inside
        # Flower's protocol); an operator's is verified against the federation's CA and checked below.
        ssl_client_certificate "{ca}";
        ssl_verify_client optional_no_ca;
        ssl_verify_depth 1;

        location /v1/fleet/ {{
            proxy_pass https://fedrt_superlink;
            proxy_read_timeout 10m;
            proxy_send_timeout 10m;
        }}
        location /v1/control/ {{
            access_log "{folder}/control-access.log" operator;
            if ($fedrt_refusal) {{
                return 403;
            }}
            proxy_pass https://fedrt_superlink;
            proxy_read_timeout 1d;  # a followed run streams its log for as long as it runs
            proxy_send_timeout 1d;
        }}
        # A certificate that fails verification (expired, not for clients, ...) ends here too, not in a bare 400.
        error_page 403 495 = @refused;
        location @refused {{
            access_log "{folder}/control-access.log" operator;
            add_header {header} $fedrt_refusal always;
            return 403 "operator credential required: $fedrt_refusal\\n";
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def nginx_executable() -> str:
    """The nginx program (on PATH or Debian's /usr/sbin/nginx); an error saying how to install it otherwise."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        raise DeploymentError(f"nginx not found; the server's public port is nginx in front of the SuperLink: "
                              f"{NGINX_HOW}")
    return found


def proxy_folder(settings: SuperLinkSettings) -> Path:
    """The proxy's files in the state folder: its configuration, pid file, logs and temporary folders."""
    return settings.state_dir.resolve() / "proxy"


def _quoted(path: Path) -> str:
    """``path`` as it goes between double quotes in nginx's configuration; refused when it could not."""
    if _UNSAFE.search(str(path)):
        raise ConfigError(f"{path}: the server's state and certificate folders may not hold the characters "
                          "\" $ \\ or control characters (nginx reads them into its configuration); move them")
    return str(path)


def proxy_config(settings: SuperLinkSettings) -> str:
    """The nginx configuration for ``settings``: the public port, the certificates and the SuperLink upstream."""
    files = ServerFiles.under(settings.certs_dir.resolve())
    return CONFIG.format(folder=_quoted(proxy_folder(settings)), ca=_quoted(files.ca_cert),
                         server_cert=_quoted(files.server_cert), server_key=_quoted(files.server_key),
                         unit=OPERATOR_UNIT, header=REFUSAL_HEADER, upstream=settings.superlink,
                         listen=settings.public)


def start_proxy(settings: SuperLinkSettings, with_parent: bool = False) -> subprocess.Popen:
    """Write the configuration and start nginx in the foreground of its own process group (its console output in
    ``proxy/console.log``); ``with_parent``: it gets SIGTERM when this process dies.
    """
    folder = proxy_folder(settings)
    for temporary in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / "tmp" / temporary).mkdir(mode=0o700, parents=True, exist_ok=True)
    config = folder / "nginx.conf"
    atomic_write(config, proxy_config(settings), 0o600)
    command = [nginx_executable(), "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log")]
    return start_process(command, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, folder / "console.log",
                         cwd=folder, with_parent=with_parent)
