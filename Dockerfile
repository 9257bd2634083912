# steerd on Debian 12: builds the project with its own install script and runs the CLI.
FROM debian:12
WORKDIR /src/steerd
COPY . .
RUN bash scripts/install-deps.sh && bash scripts/build.sh steerd && \
    install -m 0755 build/bin/steerd /usr/local/bin/steerd
ENTRYPOINT ["steerd"]
CMD ["help"]
