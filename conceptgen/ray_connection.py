"""Joining a Ray cluster, or starting a private one, in bounded time with one-line errors.

    started = connect_ray(None)              # a private Ray on this machine (never another one)
    started = connect_ray("auto")            # the cluster this node belongs to (RAY_ADDRESS, `ray start`)
    started = connect_ray("10.0.0.5:6379", timeout_s=30)

Before ``ray.init`` joins a cluster, the head is asked for its cluster id over Ray's own
gRPC protocol with a deadline: an address where nothing listens, a port that is open but
not a Ray head (another server's, which would make ``ray.init`` hang), and a head that
wants token authentication each end in one UnreachableError naming the address and what
to do. Without an address Ray is started privately (``address="local"``): Ray would
otherwise attach to "the latest cluster" recorded in its temporary folder, even a stopped
one. A private start gets a token of its own through the environment when none is set, so
it leaves no ``~/.ray/auth_token`` behind to switch authentication on for a later
``ray start``.
"""
from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from conceptgen.errors import ConfigError, UnreachableError

RAY_CONNECT_TIMEOUT_S = 30.0  # default bound on reaching a cluster's head (--connect-timeout)
AUTH_HINT = ("set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or in ~/.ray/auth_token, "
             "as on the head) for this command")


def connect_ray(address: str | None, *, timeout_s: float = RAY_CONNECT_TIMEOUT_S,
                num_cpus: float | None = None) -> bool:
    """Connects this process to Ray; True when it started Ray itself (to shut down later).
    ``address``: None starts a private Ray on this machine with ``num_cpus`` CPUs (None: all);
    'auto' joins the cluster this node belongs to; HOST:PORT joins that head node."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'conceptgen[distributed]'") from None
    if ray.is_initialized():
        return False
    if timeout_s <= 0:
        raise ConfigError(f"--connect-timeout {timeout_s:g} must be more than 0 seconds")
    if address is None:
        _start_private(num_cpus)
        return True
    address = _resolve(address)
    if not address.startswith("ray://"):  # Ray Client addresses speak another protocol
        _check_reachable(address, timeout_s)
        _probe_head(address, timeout_s)
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                 include_dashboard=False, configure_logging=False)
    except ray.exceptions.AuthenticationError:
        raise UnreachableError(f"cannot reach the Ray cluster at {address}: it refused this process's "
                               f"authentication; {AUTH_HINT}") from None
    except ConnectionError as err:
        raise UnreachableError(f"cannot reach the Ray cluster at {address}: {' '.join(str(err).split())[:200]}; "
                               f"if the cluster uses token authentication, {AUTH_HINT}") from None
    return True


def _start_private(num_cpus: float | None) -> None:
    import ray

    own = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    if not any(os.environ.get(k) for k in own) and not (Path.home() / ".ray" / "auth_token").exists():
        # Ray would write a token file into the home folder, and a later `ray start --head`
        # there would turn token authentication on for everyone using that folder.
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    ray.init(address="local", num_cpus=num_cpus, logging_level="ERROR", log_to_driver=False,
             include_dashboard=False, configure_logging=False)


def _resolve(address: str) -> str:
    """'auto' as HOST:PORT: RAY_ADDRESS, else the cluster `ray start` last recorded here."""
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError):
        found = None
    if not found:
        raise UnreachableError("--address auto found no Ray cluster on this machine; start one with "
                               "`ray start --head`, or give the head's HOST:PORT")
    return found


def _check_reachable(address: str, timeout_s: float) -> None:
    """One-line UnreachableError when HOST:PORT does not accept a TCP connection."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not HOST:PORT or 'auto'; the head node prints its "
                          "address when started with `ray start --head`")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise UnreachableError(f"cannot reach the Ray cluster at {address}: {err.strerror or err} (nothing "
                               "listens there); start it with `ray start --head` on the head node, or check "
                               "--address") from None


def _probe_head(address: str, timeout_s: float) -> None:
    """Asks the head at ``address`` for its cluster id within ``timeout_s``; one-line
    UnreachableError when it does not answer as a Ray head or wants a token."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    try:
        from ray._private.authentication.grpc_authentication_client_interceptor import (
            _get_authentication_metadata_tuple as auth_metadata)
    except ImportError:  # a Ray without token authentication
        auth_metadata = tuple
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s, metadata=auth_metadata())
            return
        except grpc.RpcError as err:
            code = err.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        raise UnreachableError(f"cannot reach the Ray cluster at {address}: it uses token authentication and "
                               f"{'refused the token of' if auth_metadata() else 'got no token from'} this "
                               f"process; {AUTH_HINT}")
    answer = (f"gave no answer within {timeout_s:g}s" if code == grpc.StatusCode.DEADLINE_EXCEEDED
              else f"does not speak Ray's protocol ({code.name.lower()})")
    raise UnreachableError(f"cannot reach the Ray cluster at {address}: something listens there but {answer}; "
                           "it may be another server's port (the head prints its address at `ray start --head`, "
                           "port 6379 by default) or a head still starting; check --address, or raise "
                           "--connect-timeout")
