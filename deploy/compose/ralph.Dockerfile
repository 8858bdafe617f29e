# syntax=docker/dockerfile:1
# Ralph LRS 5.1.0 (its official image) as the compose stack's storage and forwarding target,
# started by tests/realparts/ralph_launcher.py: Ralph 5.1.0's filesystem backend refuses
# every write after the first unless switched to APPEND, which the launcher does (the same
# launcher the test suite and deploy/demo.sh use). Built from the repository root by
# deploy/docker-compose.yml; the context is filtered by ralph.Dockerfile.dockerignore.
FROM fundocker/ralph:5.1.0
USER 0
# A named volume mounted on /app/data takes this directory's owner: Ralph runs as uid 1000.
RUN install -d -o 1000 -g 1000 -m 0700 /app/data /app/.ralph
COPY tests/realparts/ralph_launcher.py /opt/ralph/ralph_launcher.py
USER 1000
ENV RALPH_RUNSERVER_BACKEND=fs \
    RALPH_RUNSERVER_AUTH_BACKENDS=basic \
    RALPH_BACKENDS__LRS__FS__DEFAULT_DIRECTORY_PATH=/app/data \
    RALPH_APP_DIR=/app/.ralph \
    PYTHONUNBUFFERED=1
EXPOSE 8100
CMD ["python", "/opt/ralph/ralph_launcher.py", "0.0.0.0", "8100"]
