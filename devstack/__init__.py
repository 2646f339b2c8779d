"""Running all of Haven on one machine: ``haven up`` and the processes it starts.

Everything here exists for local running only (development, evaluation, a single-box
install): the launcher and its supervisor (``up``, ``supervisor``), its state folder and
per-installation secrets (``state``), the embedded object store (``objectstore``) and the
all-in-one API+worker process (``allinone``). The shared package ``haven`` and the services
never import it; production runs the services apart (docker-stack.yml) and its images leave
this package out. ``haven up`` reaches the CLI through the ``haven.cli`` entry-point group.
"""
