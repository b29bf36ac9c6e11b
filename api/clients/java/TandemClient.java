// Tandem recommendation client for the legacy Java/Spring platform: Java 17, java.net.http, no dependencies.
//
// Run without compiling (JDK 11+ source launcher):
//   java api/clients/java/TandemClient.java --url http://127.0.0.1:8000 --key $TANDEM_KEY \
//        --image-path s3://buyer-photos/2024/06/123.jpg --text "same style in red" --top-k 5
//
// It shows the call the platform makes: JSON in, product cards out, with a connect timeout, a
// per-request timeout and a small circuit breaker, so a slow or dead Tandem never holds the
// platform's threads. Exit codes: 0 ok, 2 Tandem answered an error, 3 unreachable / timed out,
// 4 breaker open, 64 bad arguments.

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.net.http.HttpTimeoutException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public final class TandemClient {

    /** One product card, as the platform renders it. */
    public record Item(String productId, String name, String category, double score, String imageUrl) {}

    /** A successful answer. */
    public record Recommendations(String requestId, String mode, List<Item> items, Map<String, Object> timingMs) {}

    /** Tandem answered with its error shape {"error": {"code", "message", "request_id"}}. */
    public static final class TandemException extends Exception {
        public final int status;
        public final String code;
        public final String requestId;

        TandemException(int status, String code, String message, String requestId) {
            super(status + " " + code + ": " + message);
            this.status = status;
            this.code = code;
            this.requestId = requestId;
        }
    }

    /** Fails fast after repeated failures, then lets one call through after a cool-down. */
    static final class CircuitBreaker {
        private final int threshold;
        private final Duration coolDown;
        private int failures;
        private long openedAt = -1;

        CircuitBreaker(int threshold, Duration coolDown) {
            this.threshold = threshold;
            this.coolDown = coolDown;
        }

        synchronized boolean allow() {
            return openedAt < 0 || System.nanoTime() - openedAt > coolDown.toNanos();
        }

        synchronized void success() {
            failures = 0;
            openedAt = -1;
        }

        synchronized void failure() {
            if (++failures >= threshold) {
                openedAt = System.nanoTime();
            }
        }
    }

    private final HttpClient http;
    private final URI endpoint;
    private final String apiKey;
    private final Duration timeout;
    private final CircuitBreaker breaker = new CircuitBreaker(5, Duration.ofSeconds(10));

    public TandemClient(String baseUrl, String apiKey, Duration timeout) {
        // HTTP/1.1: the JDK's default h2c upgrade attempt is not understood by every server or proxy.
        this.http = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(2))
                .build();
        this.endpoint = URI.create(baseUrl.replaceAll("/+$", "") + "/v1/recommendations");
        this.apiKey = apiKey;
        this.timeout = timeout;
    }

    /** Ask for recommendations; {@code request} holds the JSON fields (image_path, image_url, text, top_k, mode). */
    public Recommendations recommend(Map<String, Object> request)
            throws IOException, InterruptedException, TandemException {
        if (!breaker.allow()) {
            throw new TandemException(503, "client_breaker_open", "Tandem failed repeatedly; not called", null);
        }
        HttpRequest httpRequest = HttpRequest.newBuilder(endpoint)
                .timeout(timeout)
                .header("Content-Type", "application/json")
                .header("Accept", "application/json")
                .header("X-API-Key", apiKey)
                .POST(HttpRequest.BodyPublishers.ofString(Json.write(request)))
                .build();
        HttpResponse<String> response;
        try {
            response = http.send(httpRequest, HttpResponse.BodyHandlers.ofString());
        } catch (IOException e) {
            breaker.failure();
            throw e;
        }
        Object parsed = Json.parse(response.body());
        if (response.statusCode() != 200) {
            if (response.statusCode() >= 500 || response.statusCode() == 429) {
                breaker.failure();
            }
            Map<?, ?> error = (Map<?, ?>) ((Map<?, ?>) parsed).get("error");
            throw new TandemException(response.statusCode(), String.valueOf(error.get("code")),
                    String.valueOf(error.get("message")), (String) error.get("request_id"));
        }
        breaker.success();
        Map<?, ?> body = (Map<?, ?>) parsed;
        List<Item> items = new ArrayList<>();
        for (Object o : (List<?>) body.get("items")) {
            Map<?, ?> it = (Map<?, ?>) o;
            items.add(new Item((String) it.get("product_id"), (String) it.get("name"), (String) it.get("category"),
                    ((Number) it.get("score")).doubleValue(), (String) it.get("image_url")));
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> timing = (Map<String, Object>) body.get("timing_ms");
        return new Recommendations((String) body.get("request_id"), (String) body.get("mode"), items, timing);
    }

    public static void main(String[] args) throws InterruptedException {
        Map<String, String> opts = new LinkedHashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) {
                usage("unexpected argument " + args[i]);
            }
            opts.put(args[i].substring(2), args[i + 1]);
        }
        if (args.length % 2 != 0) {
            usage("missing value for " + args[args.length - 1]);
        }
        String url = opts.getOrDefault("url", "http://127.0.0.1:8000");
        String key = opts.getOrDefault("key", System.getenv().getOrDefault("TANDEM_API_KEY", ""));
        Map<String, Object> request = new LinkedHashMap<>();
        for (String field : List.of("image-path", "image-url", "text", "mode")) {
            if (opts.containsKey(field)) {
                request.put(field.replace('-', '_'), opts.get(field));
            }
        }
        if (opts.containsKey("top-k")) {
            try {
                request.put("top_k", Integer.parseInt(opts.get("top-k")));
            } catch (NumberFormatException e) {
                usage("--top-k must be a number");
            }
        }
        if (request.isEmpty()) {
            usage("give --image-path, --image-url or --text");
        }
        TandemClient client = new TandemClient(url, key, Duration.ofSeconds(5));
        try {
            Recommendations r = client.recommend(request);
            System.out.printf("request %s (%s) in %s ms%n", r.requestId(), r.mode(), r.timingMs().get("total"));
            int rank = 1;
            for (Item it : r.items()) {
                System.out.printf("%2d. %s  %s  [%s]  score %.4f  %s%n", rank++, it.productId(), it.name(),
                        it.category(), it.score(), it.imageUrl());
            }
        } catch (TandemException e) {
            System.err.println("tandem error: " + e.getMessage() + " (request " + e.requestId + ")");
            System.exit(e.code.equals("client_breaker_open") ? 4 : 2);
        } catch (HttpTimeoutException e) {
            System.err.println("tandem timed out: " + e.getMessage());
            System.exit(3);
        } catch (IOException e) {
            System.err.println("tandem unreachable: " + e);
            System.exit(3);
        }
    }

    private static void usage(String problem) {
        System.err.println("error: " + problem);
        System.err.println("usage: java TandemClient.java --url URL --key KEY"
                + " [--image-path P | --image-url U] [--text T] [--top-k N] [--mode hierarchical|flat]");
        System.exit(64);
    }

    /** Just enough JSON for this API: objects, arrays, strings, numbers, booleans, null. */
    static final class Json {
        private final String s;
        private int i;

        private Json(String s) {
            this.s = s;
        }

        static Object parse(String text) {
            Json p = new Json(text);
            Object v = p.value();
            p.ws();
            if (p.i != text.length()) {
                throw new IllegalArgumentException("trailing data at " + p.i);
            }
            return v;
        }

        static String write(Map<String, Object> map) {
            StringBuilder b = new StringBuilder("{");
            for (Map.Entry<String, Object> e : map.entrySet()) {
                if (b.length() > 1) {
                    b.append(',');
                }
                quote(b, e.getKey());
                b.append(':');
                if (e.getValue() instanceof Number n) {
                    b.append(n);
                } else {
                    quote(b, String.valueOf(e.getValue()));
                }
            }
            return b.append('}').toString();
        }

        private static void quote(StringBuilder b, String v) {
            b.append('"');
            for (char c : v.toCharArray()) {
                switch (c) {
                    case '"' -> b.append("\\\"");
                    case '\\' -> b.append("\\\\");
                    case '\n' -> b.append("\\n");
                    case '\r' -> b.append("\\r");
                    case '\t' -> b.append("\\t");
                    default -> {
                        if (c < 0x20) {
                            b.append(String.format("\\u%04x", (int) c));
                        } else {
                            b.append(c);
                        }
                    }
                }
            }
            b.append('"');
        }

        private void ws() {
            while (i < s.length() && Character.isWhitespace(s.charAt(i))) {
                i++;
            }
        }

        private Object value() {
            ws();
            char c = s.charAt(i);
            if (c == '{') {
                Map<String, Object> m = new LinkedHashMap<>();
                i++;
                ws();
                if (s.charAt(i) == '}') {
                    i++;
                    return m;
                }
                while (true) {
                    ws();
                    String k = string();
                    ws();
                    expect(':');
                    m.put(k, value());
                    ws();
                    if (s.charAt(i) == ',') {
                        i++;
                    } else {
                        expect('}');
                        return m;
                    }
                }
            }
            if (c == '[') {
                List<Object> l = new ArrayList<>();
                i++;
                ws();
                if (s.charAt(i) == ']') {
                    i++;
                    return l;
                }
                while (true) {
                    l.add(value());
                    ws();
                    if (s.charAt(i) == ',') {
                        i++;
                    } else {
                        expect(']');
                        return l;
                    }
                }
            }
            if (c == '"') {
                return string();
            }
            if (s.startsWith("true", i)) {
                i += 4;
                return Boolean.TRUE;
            }
            if (s.startsWith("false", i)) {
                i += 5;
                return Boolean.FALSE;
            }
            if (s.startsWith("null", i)) {
                i += 4;
                return null;
            }
            int start = i;
            while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) {
                i++;
            }
            return Double.parseDouble(s.substring(start, i));
        }

        private String string() {
            expect('"');
            StringBuilder b = new StringBuilder();
            while (s.charAt(i) != '"') {
                char c = s.charAt(i++);
                if (c == '\\') {
                    char e = s.charAt(i++);
                    switch (e) {
                        case 'n' -> b.append('\n');
                        case 't' -> b.append('\t');
                        case 'r' -> b.append('\r');
                        case 'b' -> b.append('\b');
                        case 'f' -> b.append('\f');
                        case 'u' -> {
                            b.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                            i += 4;
                        }
                        default -> b.append(e);
                    }
                } else {
                    b.append(c);
                }
            }
            i++;
            return b.toString();
        }

        private void expect(char c) {
            if (s.charAt(i) != c) {
                throw new IllegalArgumentException("expected '" + c + "' at " + i);
            }
            i++;
        }
    }
}
