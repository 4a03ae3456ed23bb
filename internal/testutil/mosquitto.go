// Package testutil holds helpers for tests that use real components: a
// mosquitto broker on a free loopback port that can be stopped, killed and
// restarted (optionally losing its persistence), a TCP proxy that can cut
// or flap connections, and polling helpers.
package testutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// MosquittoPath is the broker binary used by StartMosquitto.
var MosquittoPath = "/usr/sbin/mosquitto"

// Broker is a mosquitto process owned by a test. Its port stays the same
// across Stop/Start so clients configured with Addr reconnect to it.
type Broker struct {
	t     testing.TB
	dir   string
	port  int
	extra string
	// listener, when set, renders the listener and access configuration
	// for the broker's port in place of the default anonymous one.
	listener func(port int) string
	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	logPath  string
}

// BrokerOption adjusts the generated mosquitto.conf.
type BrokerOption func(*Broker)

// WithConfig appends raw lines to the generated configuration.
func WithConfig(lines ...string) BrokerOption {
	return func(b *Broker) { b.extra += strings.Join(lines, "\n") + "\n" }
}

// WithListenerConfig replaces the default listener (plain MQTT on
// 127.0.0.1, anonymous access, no queue or packet limit) with the lines
// render returns for the broker's port: a test runs a shipped
// configuration this way, on mosquitto's defaults otherwise. The
// persistence and log settings stay, so that Log and the restarts work.
func WithListenerConfig(render func(port int) string) BrokerOption {
	return func(b *Broker) { b.listener = render }
}

// StartMosquitto starts a broker listening on 127.0.0.1 on a free port,
// with persistence in a temporary directory and anonymous access, and
// stops it when the test ends. It fails the test if mosquitto is missing:
// the CI installs it, and a silently skipped delivery test proves nothing.
func StartMosquitto(t testing.TB, opts ...BrokerOption) *Broker {
	t.Helper()
	if _, err := os.Stat(MosquittoPath); err != nil {
		t.Fatalf("mosquitto not found at %s (install the Debian package mosquitto): %v", MosquittoPath, err)
	}
	b := &Broker{t: t, dir: t.TempDir()}
	for _, o := range opts {
		o(b)
	}
	b.logPath = filepath.Join(b.dir, "mosquitto.log")
	port, err := FreePort()
	if err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	b.port = port
	if err := b.start(); err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	t.Cleanup(func() { b.Stop() })
	return b
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Addr is host:port of the listener.
func (b *Broker) Addr() string { return fmt.Sprintf("127.0.0.1:%d", b.port) }

// URL is the broker address in the form paho expects.
func (b *Broker) URL() string { return "tcp://" + b.Addr() }

// Dir is the broker's working directory (config, log, persistence).
func (b *Broker) Dir() string { return b.dir }

// Log returns the broker's log so far, for failure messages.
func (b *Broker) Log() string {
	data, _ := os.ReadFile(b.logPath)
	return string(data)
}

func (b *Broker) persistDir() string { return filepath.Join(b.dir, "persist") + "/" }

func (b *Broker) start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd != nil {
		return errors.New("broker already running")
	}
	if err := os.MkdirAll(b.persistDir(), 0o755); err != nil {
		return err
	}
	// The default test broker queues without limit, so that outage tests
	// lose nothing to the broker's queue.
	listener := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_packet_size 1048576\n", b.port)
	if b.listener != nil {
		listener = b.listener(b.port) + "\n"
	}
	conf := fmt.Sprintf(`%spersistence true
persistence_location %s
autosave_interval 1
log_dest file %s
log_type error
log_type warning
log_type notice
log_type information
%s`, listener, b.persistDir(), b.logPath, b.extra)
	if os.Geteuid() == 0 {
		// As root, mosquitto switches to the "mosquitto" user, which cannot
		// write the test's temporary directory.
		conf += "user root\n"
	}
	confPath := filepath.Join(b.dir, "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	var lastErr error
	// The port can be taken in the short window after a stop; retry a bit.
	for attempt := 0; attempt < 50; attempt++ {
		cmd := exec.Command(MosquittoPath, "-c", confPath)
		cmd.Dir = b.dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("run %s: %w", MosquittoPath, err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				lastErr = fmt.Errorf("mosquitto exited at start: %s %s", out.String(), tail(b.Log()))
				goto retry
			default:
			}
			if c, err := net.DialTimeout("tcp", b.Addr(), 100*time.Millisecond); err == nil {
				c.Close()
				b.cmd, b.exited = cmd, exited
				return nil
			}
			time.Sleep(20 * time.Millisecond)
		}
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("mosquitto did not listen on %s within 5 s: %s", b.Addr(), tail(b.Log()))
	retry:
		time.Sleep(100 * time.Millisecond)
	}
	return lastErr
}

func tail(s string) string {
	if len(s) > 2000 {
		return s[len(s)-2000:]
	}
	return s
}

// Start restarts a stopped broker on the same port with the same
// persistence directory.
func (b *Broker) Start() {
	b.t.Helper()
	if err := b.start(); err != nil {
		b.t.Fatalf("restart mosquitto: %v", err)
	}
}

// StartWiped restarts a stopped broker after deleting its persistence: every
// session, subscription and queued message is gone, as after a disk loss.
func (b *Broker) StartWiped() {
	b.t.Helper()
	if err := os.RemoveAll(b.persistDir()); err != nil {
		b.t.Fatalf("wipe mosquitto persistence: %v", err)
	}
	b.Start()
}

// Stop terminates the broker gracefully (SIGTERM: it saves its persistence
// file) and waits for it. Stopping a stopped broker is a no-op.
func (b *Broker) Stop() { b.signal(syscall.SIGTERM) }

// Kill terminates the broker with SIGKILL: only what its autosave (every
// second here) wrote survives.
func (b *Broker) Kill() { b.signal(syscall.SIGKILL) }

func (b *Broker) signal(sig syscall.Signal) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return
	}
	b.cmd.Process.Signal(sig)
	select {
	case <-b.exited:
	case <-time.After(10 * time.Second):
		b.cmd.Process.Kill()
		<-b.exited
	}
	b.cmd, b.exited = nil, nil
}

// Reload sends SIGHUP, on which mosquitto re-reads its ACL and password
// files, and waits until the log says it did. mosquitto logs that line
// just before it reloads, in its one event loop, so every packet a client
// sends after Reload returns meets the new files.
func (b *Broker) Reload() {
	b.t.Helper()
	b.mu.Lock()
	cmd := b.cmd
	b.mu.Unlock()
	if cmd == nil {
		b.t.Fatal("reload: broker not running")
	}
	const done = "Reloading config."
	before := strings.Count(b.Log(), done)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		b.t.Fatalf("reload mosquitto: %v", err)
	}
	if !WaitFor(5*time.Second, func() bool { return strings.Count(b.Log(), done) > before }) {
		b.t.Fatalf("mosquitto did not log %q within 5 s after SIGHUP:\n%s", done, tail(b.Log()))
	}
}

// Running reports whether the broker process is up.
func (b *Broker) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cmd != nil
}
