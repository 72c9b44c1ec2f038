#!/usr/bin/env bash
# Load test of a running prediction API with JMeter (what `make loadtest` calls):
#   1. installs Debian's jmeter + jmeter-http (2.13) with apt-get when missing;
#   2. writes var/loadtest/requests.tsv with scripts/make_requests.py when missing, and splits it
#      into one file per model (the plan has one thread group per model);
#   3. checks that the API answers /ready on DC_API_HOST:DC_API_PORT (start it with `make run`);
#   4. runs bench/jmeter/predict.jmx headless, bounded in time and in requests, into a CSV JTL;
#   5. summarises it with scripts/loadtest_summary.py (exit 1 when any request failed).
#
# Settings (environment), with defaults:
#   LOADTEST_DURATION=60   seconds (hard stop of JMeter at duration + 60 s)
#   LOADTEST_THREADS=8     threads in all, split over the models by their share of the stream
#   LOADTEST_REQUESTS=1000000  request bound, split the same way (whichever comes first ends it)
#   LOADTEST_RATE=0        cap in requests/s for the whole test (0: as fast as the threads go)
#   LOADTEST_RAMPUP=5      seconds to start the threads
#   LOADTEST_DIR=var/loadtest  requests.tsv, results.jtl, jmeter.log, summary.{json,md}
#   DC_API_HOST=127.0.0.1 DC_API_PORT=8000
# Extra arguments go to jmeter as they are (e.g. -Jtimeout_ms=5000).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
DURATION="${LOADTEST_DURATION:-60}"
THREADS="${LOADTEST_THREADS:-8}"
REQUESTS="${LOADTEST_REQUESTS:-1000000}"
RATE="${LOADTEST_RATE:-0}"
RAMPUP="${LOADTEST_RAMPUP:-5}"
OUT="${LOADTEST_DIR:-var/loadtest}"
HOST="${DC_API_HOST:-127.0.0.1}"
PORT="${DC_API_PORT:-8000}"
JMETER_HOME=/usr/share/jmeter
mkdir -p "$OUT"
# Absolute: JMeter resolves relative CSV paths against the plan's folder, not the cwd.
OUT="$(cd "$OUT" && pwd)"

# 1. JMeter. Debian splits it: the HTTP sampler lives in jmeter-http, without which the plan
#    cannot load. --no-install-recommends keeps out the GUI docs; the JRE comes as a dependency.
if ! command -v jmeter >/dev/null || [[ ! -f "$JMETER_HOME/lib/ext/ApacheJMeter_http.jar" ]]; then
    echo "[loadtest] installing jmeter and jmeter-http with apt-get"
    SUDO=""
    [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    # env after sudo: sudo drops DEBIAN_FRONTEND from the environment otherwise.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        jmeter jmeter-http >/dev/null
fi

# 2. The request stream (model TAB body, no header), then one file per model so that each
#    thread group reads only its own rows and the request bound is exact.
if [[ ! -s "$OUT/requests.tsv" ]]; then
    echo "[loadtest] writing $OUT/requests.tsv with scripts/make_requests.py"
    "$PY" scripts/make_requests.py --out-dir "$OUT"
fi
models=(banking77 clinc150)
declare -A count
total=0
for m in "${models[@]}"; do
    awk -F'\t' -v m="$m" '$1 == m' "$OUT/requests.tsv" >"$OUT/requests.$m.tsv"
    count[$m]=$(wc -l <"$OUT/requests.$m.tsv")
    total=$((total + count[$m]))
done
if ((total == 0)); then
    echo "[loadtest] $OUT/requests.tsv has no banking77/clinc150 rows" >&2
    exit 1
fi

# Threads, request bound and rate per thread group, in proportion to the stream's model mix
# (at least one thread per model that has rows).
jargs=()
for m in "${models[@]}"; do
    n=${count[$m]}
    if ((n == 0)); then
        jargs+=("-J${m}_threads=0")
        continue
    fi
    t=$(((THREADS * n + total / 2) / total))
    ((t < 1)) && t=1
    r=$(((REQUESTS * n + total / 2) / total))
    loops=$(((r + t - 1) / t))
    jargs+=("-J${m}_threads=$t" "-J${m}_loops=$loops" "-J${m}_tsv=$OUT/requests.$m.tsv")
    if ((RATE > 0)); then
        # requests/minute for this group; the plan's timer shares it among the group's threads
        jargs+=("-J${m}_rate_per_min=$(((RATE * 60 * n + total / 2) / total))")
    fi
    echo "[loadtest] $m: $n rows in the stream, $t thread(s), up to $r requests"
done

# 3. The API must already run: this script measures it, it does not start it.
if ! "$PY" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=5)" \
    "http://${HOST}:${PORT}/ready" 2>/dev/null; then
    echo "[loadtest] the prediction API does not answer http://${HOST}:${PORT}/ready;" \
        "start it with make run (or set DC_API_HOST/DC_API_PORT)" >&2
    exit 1
fi

# 4. JMeter 2.13 deserialises the plan with XStream, and Debian ships XStream 1.4.20, whose
#    default allow-list rejects JMeter's own classes (ForbiddenClassException: ScriptWrapper):
#    the stock `jmeter` command cannot load any plan. This launcher (Java 11+ runs a single
#    source file directly) allows every type in JMeter's two XStream instances, which is what
#    2.13 expected, then starts JMeter as /usr/bin/jmeter would.
launcher="$OUT/.jmeter/JMeterXStreamFix.java"
mkdir -p "$(dirname "$launcher")"
cat >"$launcher" <<'JAVA'
import java.lang.reflect.Field;
import java.util.Properties;

/** Starts JMeter 2.13 (NewDriver) after allowing every type in its XStream instances. */
public class JMeterXStreamFix {
    public static void main(String[] args) throws Exception {
        String home = System.getProperty("jmeter.home", "/usr/share/jmeter");
        Class<?> newDriver = Class.forName("org.apache.jmeter.NewDriver");
        Field loaderField = newDriver.getDeclaredField("loader");
        loaderField.setAccessible(true);
        ClassLoader loader = (ClassLoader) loaderField.get(null);
        Thread.currentThread().setContextClassLoader(loader);
        // SaveService reads the properties when its class loads: load them first, with the
        // jmeter.save.saveservice.* overrides of the command line (JMeter reloads them later).
        Class<?> utils = Class.forName("org.apache.jmeter.util.JMeterUtils", true, loader);
        utils.getMethod("setJMeterHome", String.class).invoke(null, home);
        utils.getMethod("loadJMeterProperties", String.class)
            .invoke(null, home + "/bin/jmeter.properties");
        Properties props = (Properties) utils.getMethod("getJMeterProperties").invoke(null);
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (arg.startsWith("-Jjmeter.save.saveservice.") && eq > 0) {
                props.setProperty(arg.substring(2, eq), arg.substring(eq + 1));
            }
        }
        try {
            Class<?> saveService = Class.forName("org.apache.jmeter.save.SaveService", true, loader);
            Class<?> permission =
                Class.forName("com.thoughtworks.xstream.security.TypePermission", true, loader);
            Object any = Class.forName("com.thoughtworks.xstream.security.AnyTypePermission",
                true, loader).getField("ANY").get(null);
            for (String name : new String[] {"JMXSAVER", "JTLSAVER"}) {
                Field f = saveService.getDeclaredField(name);
                f.setAccessible(true);
                Object xstream = f.get(null);
                xstream.getClass().getMethod("addPermission", permission).invoke(xstream, any);
            }
        } catch (ClassNotFoundException | NoSuchFieldException | NoSuchMethodException e) {
            System.err.println("JMeterXStreamFix: not needed here (" + e + ")");
        }
        newDriver.getMethod("main", String[].class).invoke(null, (Object) args);
    }
}
JAVA

jtl="$OUT/results.jtl"
rm -f "$jtl" # JMeter appends to an existing file, which would mix two runs
echo "[loadtest] jmeter: ${THREADS} threads, ${DURATION} s, rate cap ${RATE} req/s (0: none)," \
    "http://${HOST}:${PORT}"
# timeout: the plan stops itself after DURATION; this is the backstop for a hung JMeter.
# -Jjmeter.save.saveservice.*: a CSV JTL with a header and the assertion failure messages
# (2.13 writes no header by default).
timeout --kill-after=10 "$((DURATION + 60))" \
    java -Djmeter.home="$JMETER_HOME" -cp "$JMETER_HOME/bin/ApacheJMeter.jar" "$launcher" \
    -n -t bench/jmeter/predict.jmx -l "$jtl" -j "$OUT/jmeter.log" \
    -Jjmeter.save.saveservice.output_format=csv \
    -Jjmeter.save.saveservice.print_field_names=true \
    -Jjmeter.save.saveservice.assertion_results_failure_message=true \
    -Jhost="$HOST" -Jport="$PORT" -Jduration="$DURATION" -Jrampup="$RAMPUP" \
    "${jargs[@]}" "$@"

# 5. The summary's exit status is the target's: 1 when any request failed.
"$PY" scripts/loadtest_summary.py "$jtl" --out-dir "$OUT"
