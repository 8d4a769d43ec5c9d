#!/usr/bin/env bash
# A real CQL server for development and CI: Apache Cassandra 5.0 from Maven Central, run as plain
# JVM processes (no package, no container). See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: tools/cassandra/cassandra.sh [options] COMMAND

Commands:
  fetch              resolve Cassandra's jars with Maven into the cache (done by start too)
  start [--nodes N]  start one node on 127.0.0.1:9042, or N (1-9) forming one ring on
                     127.0.0.11, 127.0.0.12, ... (native port 9042 on each); waits until every
                     node's native port answers and "Startup complete" is logged, then prints how
                     long that took. Already running with the same nodes: does nothing.
                     Each start begins with empty data unless --keep-data is given.
  stop               stop the nodes (SIGTERM, SIGKILL after 30 s)
  status             each node: running or not, its address, pid and log
  nodes              the contact points, comma-separated, for STING_SCYLLA_NODES
  ring               the ring as node 1 sees it (nodetool status)

Options (or environment):
  --cache DIR        (CASSANDRA_CACHE, default .ci-cache/cassandra) Maven's local repository and
                     the resolved jars, reused between runs
  --run DIR          (CASSANDRA_RUN, default <cache>/run) configuration, data, logs and pid files
  --version V        (CASSANDRA_VERSION, default 5.0.9) org.apache.cassandra:cassandra-all
                     version; "latest" takes the newest 5.0.x Maven Central serves
  --heap SIZE        (CASSANDRA_HEAP, default 1G) -Xms and -Xmx of each node
  --timeout SECONDS  (CASSANDRA_START_TIMEOUT, default 300) how long start waits
  --keep-data        start on the data of the previous run instead of empty directories

Needs Java 17 (JAVA_HOME or java on PATH; Cassandra 5.0 does not run on Java 24+, 4.x not on
17) and Maven (mvn). Runs as root too: the root check is in Cassandra's bin/cassandra launcher,
which this script does not use.

Example:
  tools/cassandra/cassandra.sh start
  STING_SCYLLA_NODES=$(tools/cassandra/cassandra.sh nodes) \
    cargo test -p sting-store --locked scylladb -- --include-ignored
  tools/cassandra/cassandra.sh stop
EOF
}

die() {
  echo "cassandra.sh: $*" >&2
  exit 1
}

cache=${CASSANDRA_CACHE:-.ci-cache/cassandra}
run=${CASSANDRA_RUN:-}
version=${CASSANDRA_VERSION:-5.0.9}
heap=${CASSANDRA_HEAP:-1G}
timeout=${CASSANDRA_START_TIMEOUT:-300}
keep_data=0
nodes=1
command=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help | help) usage; exit 0 ;;
    --cache) cache=${2:?--cache needs a directory}; shift ;;
    --run) run=${2:?--run needs a directory}; shift ;;
    --version) version=${2:?--version needs a version}; shift ;;
    --heap) heap=${2:?--heap needs a size}; shift ;;
    --timeout) timeout=${2:?--timeout needs seconds}; shift ;;
    --nodes) nodes=${2:?--nodes needs a count}; shift ;;
    --keep-data) keep_data=1 ;;
    fetch | start | stop | status | nodes | ring)
      [ -z "$command" ] || die "one command at a time (got $command and $1)"
      command=$1 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
[ -n "$command" ] || { usage >&2; exit 2; }
case "$nodes" in [1-9]) ;; *) die "--nodes takes 1 to 9, not $nodes" ;; esac
case "$timeout" in '' | *[!0-9]*) die "--timeout takes whole seconds, not $timeout" ;; esac

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
run=${run:-$cache/run}
mkdir -p "$run"
run=$(cd "$run" && pwd)

java=java
[ -n "${JAVA_HOME:-}" ] && java="$JAVA_HOME/bin/java"

# The address of node $1 of $2: 127.0.0.1 alone, 127.0.0.1N in a ring.
address() {
  if [ "$2" -eq 1 ]; then echo 127.0.0.1; else echo "127.0.0.1$1"; fi
}

# The running configuration: how many nodes the last start made (0: none recorded).
running_count() {
  cat "$run/nodes" 2>/dev/null || echo 0
}

pid_of() {
  local pid
  pid=$(cat "$run/node$1/pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # A recycled pid is not ours: it must be a JVM running CassandraDaemon.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q CassandraDaemon || return 1
  echo "$pid"
}

port_answers() {
  (exec 3<>"/dev/tcp/$1/9042") 2>/dev/null
}

# The classpath's jars, resolved with Maven into the cache once per version.
fetch() {
  local v=$version
  if [ "$v" = latest ]; then
    v="[5.0.0,5.1)"
  else
    [ -f "$cache/$v/complete" ] && { lib="$cache/$v/lib"; return 0; }
  fi
  command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed to fetch Cassandra"
  local work
  work=$(mktemp -d "$cache/fetch.XXXXXX")
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sting</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$v</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.6.1</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF
  echo "cassandra.sh: resolving org.apache.cassandra:cassandra-all:$v with Maven" >&2
  # (Maven 3.8 prints colour resets even in batch mode: stripped.)
  if ! mvn -B -q --no-transfer-progress -f "$work/pom.xml" -Dmaven.repo.local="$cache/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$work/lib" 2>&1 |
    sed 's/\x1b\[[0-9;]*m//g' >&2; then
    rm -rf "$work"
    die "Maven could not resolve cassandra-all $v"
  fi
  local jars jar
  jars=("$work/lib"/cassandra-all-*.jar)
  jar=${jars[0]}
  [ -f "$jar" ] || { rm -rf "$work"; die "no cassandra-all jar among the resolved ones"; }
  v=$(basename "$jar" .jar)
  v=${v#cassandra-all-}
  version=$v
  if [ ! -f "$cache/$v/complete" ]; then
    rm -rf "${cache:?}/${v:?}"
    mkdir -p "$cache/$v"
    mv "$work/lib" "$cache/$v/lib"
    touch "$cache/$v/complete"
  fi
  rm -rf "$work"
  lib="$cache/$v/lib"
}

# Java 17 to 23: Cassandra 5.0 refuses older ones, and 24+ lack the security manager it needs.
check_java() {
  command -v "$java" >/dev/null 2>&1 || die "java not found (set JAVA_HOME to a Java 17)"
  local line major
  line=$("$java" -version 2>&1 | head -n1)
  major=$(echo "$line" | sed -E 's/.*version "([0-9]+).*/\1/')
  case "$major" in
    17 | 18 | 19 | 20 | 21 | 22 | 23) ;;
    *) die "Cassandra 5.0 needs Java 17 (to 23); $java is: $line" ;;
  esac
}

write_config() { # node index, node count
  local i=$1 n=$2 dir="$run/node$1" addr seed
  addr=$(address "$i" "$n")
  seed=$(address 1 "$n")
  mkdir -p "$dir"/{data,commitlog,saved_caches,hints,cdc_raw,logs,triggers}
  cat >"$dir/cassandra.yaml" <<EOF
# Written by tools/cassandra/cassandra.sh: a development node, not a production configuration.
cluster_name: sting-dev
num_tokens: 16
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$seed:7000"
listen_address: $addr
rpc_address: $addr
storage_port: 7000
native_transport_port: 9042
start_native_transport: true
# A new, empty cluster: nothing to stream, so nodes join without bootstrapping.
auto_bootstrap: false
data_file_directories:
  - $dir/data
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
# A fresh 5.0 cluster, not one upgraded from 4.x.
storage_compatibility_mode: NONE
# Tests drop a keyspace each: no snapshot of it.
auto_snapshot: false
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
EOF
  cat >"$dir/logback.xml" <<EOF
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
EOF
}

# conf/jvm17-server.options: what Cassandra's code reaches inside the JDK (nodetool too).
jpms=(
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
)

start_node() { # node index, node count
  local i=$1 n=$2 dir="$run/node$1" jamm addr
  addr=$(address "$i" "$n")
  jamm=("$lib"/jamm-*.jar)
  [ -f "${jamm[0]}" ] || die "no jamm jar in $lib"
  local opts=(
    -ea -Xss256k "-Xms$heap" "-Xmx$heap" -XX:+ExitOnOutOfMemoryError
    # conf/jvm17-server.options: G1, the JPMS exports and opens, Netty.
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
    -XX:G1HeapRegionSize=16m -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300
    -XX:InitiatingHeapOccupancyPercent=70
    "${jpms[@]}"
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    # conf/jvm-server.options: the agent that measures objects, IPv4.
    "-javaagent:${jamm[0]}"
    -Djava.net.preferIPv4Stack=true
    # A development node: start fast, skip the waits meant for large clusters.
    -Dcassandra.ring_delay_ms=1000
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.consistent.rangemovement=false
    -Dcassandra.superuser_setup_delay_ms=0
    # JMX for nodetool on this node only, on loopback.
    "-Dcassandra.jmx.local.port=$((7199 + 100 * (i - 1)))"
    -Dcassandra-foreground=yes
    "-Dcassandra.config=file://$dir/cassandra.yaml"
    "-Dcassandra.storagedir=$dir"
    "-Dcassandra.logdir=$dir/logs"
    "-Dcassandra.triggers_dir=$dir/triggers"
    "-Dlogback.configurationFile=file://$dir/logback.xml"
    "-Dcassandra-pidfile=$dir/pid"
  )
  : >"$dir/cassandra.log"
  # setsid: the node outlives this script and the shell that ran it.
  setsid "$java" "${opts[@]}" -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon \
    </dev/null >>"$dir/cassandra.log" 2>&1 &
  echo $! >"$dir/pid"
  echo "cassandra.sh: node $i starting on $addr:9042 (pid $!, log $dir/cassandra.log)" >&2
}

wait_ready() { # node index, node count, deadline (epoch seconds)
  local i=$1 n=$2 deadline=$3 dir="$run/node$1" addr
  addr=$(address "$i" "$n")
  while :; do
    if ! pid_of "$i" >/dev/null; then
      tail -n 40 "$dir/cassandra.log" >&2 || true
      die "node $i exited during start (log: $dir/cassandra.log)"
    fi
    if grep -q "Startup complete" "$dir/cassandra.log" && port_answers "$addr"; then
      return 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail -n 40 "$dir/cassandra.log" >&2 || true
      die "node $i not ready after ${timeout}s (log: $dir/cassandra.log)"
    fi
    sleep 0.2
  done
}

stop_all() {
  local i pid pids=()
  for dir in "$run"/node*; do
    [ -d "$dir" ] || continue
    i=${dir##*/node}
    if pid=$(pid_of "$i"); then
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$dir/pid"
  done
  local waited=0
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$waited" -ge 300 ]; then
        kill -9 "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
      waited=$((waited + 1))
    done
  done
  rm -f "$run/nodes"
  [ ${#pids[@]} -eq 0 ] || echo "cassandra.sh: stopped ${#pids[@]} node(s)" >&2
}

all_running() { # node count
  local i
  for i in $(seq 1 "$1"); do
    pid_of "$i" >/dev/null && port_answers "$(address "$i" "$1")" || return 1
  done
}

contact_points() { # node count
  local i out=""
  for i in $(seq 1 "$1"); do out="$out${out:+,}$(address "$i" "$1"):9042"; done
  echo "$out"
}

case "$command" in
  fetch)
    fetch
    echo "cassandra.sh: Cassandra $version in $lib" >&2
    ;;
  start)
    if [ "$(running_count)" -eq "$nodes" ] && all_running "$nodes"; then
      echo "cassandra.sh: $nodes node(s) already running: $(contact_points "$nodes")" >&2
      exit 0
    fi
    stop_all
    fetch
    check_java
    for i in $(seq 1 "$nodes"); do
      addr=$(address "$i" "$nodes")
      ! port_answers "$addr" || die "something else already listens on $addr:9042"
    done
    if [ "$keep_data" -eq 0 ]; then
      rm -rf "$run"/node*
    fi
    began=$(date +%s.%N)
    deadline=$(($(date +%s) + timeout))
    for i in $(seq 1 "$nodes"); do write_config "$i" "$nodes"; done
    echo "$nodes" >"$run/nodes"
    # The seed first; then the others together (an empty cluster: they need not bootstrap).
    start_node 1 "$nodes"
    wait_ready 1 "$nodes" "$deadline"
    first=$(date +%s.%N)
    for i in $(seq 2 "$nodes"); do start_node "$i" "$nodes"; done
    for i in $(seq 2 "$nodes"); do wait_ready "$i" "$nodes" "$deadline"; done
    ready=$(date +%s.%N)
    printf 'cassandra.sh: Cassandra %s, %d node(s) ready in %.1fs' "$version" "$nodes" \
      "$(awk "BEGIN{print $ready - $began}")" >&2
    [ "$nodes" -eq 1 ] || printf ' (first node %.1fs)' "$(awk "BEGIN{print $first - $began}")" >&2
    printf ': %s\n' "$(contact_points "$nodes")" >&2
    ;;
  stop)
    stop_all
    ;;
  status)
    count=$(running_count)
    if [ "$count" -eq 0 ]; then
      echo "not started"
      exit 1
    fi
    up=0
    for i in $(seq 1 "$count"); do
      addr=$(address "$i" "$count")
      if pid=$(pid_of "$i") && port_answers "$addr"; then
        echo "node $i: running on $addr:9042 (pid $pid, log $run/node$i/cassandra.log)"
        up=$((up + 1))
      elif pid=$(pid_of "$i"); then
        echo "node $i: starting or not answering on $addr:9042 (pid $pid)"
      else
        echo "node $i: not running ($addr:9042)"
      fi
    done
    [ "$up" -eq "$count" ]
    ;;
  nodes)
    count=$(running_count)
    [ "$count" -gt 0 ] || die "not started"
    contact_points "$count"
    ;;
  ring)
    [ "$(running_count)" -gt 0 ] || die "not started"
    fetch
    echo '<configuration><root level="WARN"/></configuration>' >"$run/logback-tools.xml"
    "$java" -Xmx128m "${jpms[@]}" "-Dlogback.configurationFile=file://$run/logback-tools.xml" -cp "$lib/*" org.apache.cassandra.tools.NodeTool -h 127.0.0.1 -p 7199 status
    ;;
esac
