// Package config owns the daemon's YAML configuration: its schema, the
// default of every field, strict decoding (an unknown key is an error naming
// its path and the accepted keys), validation that names the bad field and
// the accepted values, and environment overrides for secrets.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

// Config is the whole configuration file. Field order is the order of the
// commented default (DefaultYAML).
type Config struct {
	Site     string   `yaml:"site"`
	Device   string   `yaml:"device"`
	StateDir string   `yaml:"state_dir"`
	Database string   `yaml:"database"`
	Log      Log      `yaml:"log"`
	Model    Model    `yaml:"model"`
	Images   Images   `yaml:"images"`
	Inbox    Inbox    `yaml:"inbox"`
	Slides   Slides   `yaml:"slides"`
	HTTP     HTTP     `yaml:"http"`
	MQTT     MQTT     `yaml:"mqtt"`
	Camera   Camera   `yaml:"camera"`
	Storage  Storage  `yaml:"storage"`
	Drift    Drift    `yaml:"drift"`
	Feedback Feedback `yaml:"feedback"`
	Rollout  Rollout  `yaml:"rollout"`
	Memory   Memory   `yaml:"memory"`
	Shutdown Shutdown `yaml:"shutdown"`
}

// Log configures log/slog output (stderr; journald adds its own timestamps).
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// Model says which bundle classifies cells and how ONNX Runtime runs it.
type Model struct {
	Path string `yaml:"path"`
	// Keys is the trusted public-key file or directory; empty means the
	// built-in search (/etc/scopewatch/keys, then models/keys of a checkout).
	Keys          string `yaml:"keys"`
	AllowUnsigned bool   `yaml:"allow_unsigned"`
	ORTLibrary    string `yaml:"ort_library"`
	Threads       int    `yaml:"threads"`
	Batch         int    `yaml:"batch"`
	// Threshold overrides the manifest's decision threshold when > 0.
	Threshold float64 `yaml:"threshold"`
}

// Images bounds what the daemon accepts and says how it tells crops from
// fields.
type Images struct {
	// Kind is crop, field or auto (by size: FieldMinSide).
	Kind         string `yaml:"kind"`
	FieldMinSide int    `yaml:"field_min_side"`
	MaxPixels    int64  `yaml:"max_pixels"`
	MaxBytes     int64  `yaml:"max_bytes"`
	Workers      int    `yaml:"workers"`
	QueueSize    int    `yaml:"queue_size"`
}

// Inbox is the watched folder the microscope writes into.
type Inbox struct {
	Enabled        bool          `yaml:"enabled"`
	Dir            string        `yaml:"dir"`
	DoneDir        string        `yaml:"done_dir"`
	QuarantineDir  string        `yaml:"quarantine_dir"`
	AfterProcess   string        `yaml:"after_process"`
	RescanInterval time.Duration `yaml:"rescan_interval"`
	StableFor      time.Duration `yaml:"stable_for"`
	Extensions     []string      `yaml:"extensions"`
	// StuckAfter: a file still in the inbox this long after it appeared
	// is logged (once) and shows in scopewatch_inbox_oldest_seconds.
	StuckAfter time.Duration `yaml:"stuck_after"`
}

// Slides says when a slide is complete.
type Slides struct {
	Marker      string        `yaml:"marker"`
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	TargetCells int           `yaml:"target_cells"`
	DefaultID   string        `yaml:"default_id"`
	CI          string        `yaml:"ci"`
	// MinCells is the fewest counted red cells for which a slide gets a
	// parasitemia; below it the result is inconclusive.
	MinCells int `yaml:"min_cells"`
	// MinFieldCells: a field with fewer segmented cells is an
	// inconclusive field (blank, out of focus, not a smear).
	MinFieldCells int `yaml:"min_field_cells"`
	// MaxRefusedShare: a slide whose images were refused (implausible,
	// unreadable) more often than this, or whose fields were inconclusive
	// more often, is inconclusive.
	MaxRefusedShare float64 `yaml:"max_refused_share"`
}

// HTTP is the upload, health and metrics listener.
type HTTP struct {
	Enabled      bool          `yaml:"enabled"`
	Listen       string        `yaml:"listen"`
	ReadTimeout  time.Duration `yaml:"read_timeout"`
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// Token, when set, is required as "Authorization: Bearer TOKEN" on
	// /v1/...; health and metrics stay open. Required off loopback.
	Token string `yaml:"token"`
}

// MQTT is the broker connection used for status and results.
type MQTT struct {
	Enabled        bool          `yaml:"enabled"`
	Broker         string        `yaml:"broker"`
	ClientID       string        `yaml:"client_id"`
	Username       string        `yaml:"username"`
	Password       string        `yaml:"password"`
	TopicRoot      string        `yaml:"topic_root"`
	KeepAlive      time.Duration `yaml:"keep_alive"`
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	MaxBackoff     time.Duration `yaml:"max_backoff"`
	TLS            TLS           `yaml:"tls"`
}

// TLS configures the broker connection's TLS (used for ssl:// and tls:// brokers).
type TLS struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Camera is the optional VideoCapture source.
type Camera struct {
	Enabled  bool          `yaml:"enabled"`
	Source   string        `yaml:"source"`
	Interval time.Duration `yaml:"interval"`
	Slide    string        `yaml:"slide"`
}

// Storage bounds the database.
type Storage struct {
	Retention     time.Duration `yaml:"retention"`
	MaxDBBytes    int64         `yaml:"max_db_bytes"`
	MinFreeBytes  int64         `yaml:"min_free_bytes"`
	CheckInterval time.Duration `yaml:"check_interval"`
}

// Drift runs the model bundle's drift detectors (baseline.json) over every
// classified cell. Zero calibration fields keep the baseline's own
// calibration; any other value recalibrates the thresholds by simulation
// when a model loads (the result is cached in the database).
type Drift struct {
	Enabled bool `yaml:"enabled"`
	// ERT is the alarm tier's expected run time without drift, in cells.
	ERT int `yaml:"ert"`
	// WarnERT is the warn tier's; 0 means ert/10.
	WarnERT int `yaml:"warn_ert"`
	// Windows are the window sizes, ascending; empty means the baseline's.
	Windows []int `yaml:"windows"`
	// Embedding runs the embedding (MMD) detector, which needs the
	// backbone's features of every cell: only crops carry them.
	Embedding bool `yaml:"embedding"`
	// Sims is the number of simulated streams for a recalibration; 0 means
	// the baseline's.
	Sims int `yaml:"sims"`
	// PersistInterval is how often the detector state is saved.
	PersistInterval time.Duration `yaml:"persist_interval"`
}

// Feedback selects classified crops to send for labelling (uncertain
// cells, cells of drifted windows, a stratified random slice), takes
// labels from the label topic and asks for retuning when drift persists.
// Only the crop, its scores, a keyed hash of the slide id, the model
// version and the time leave the device.
type Feedback struct {
	Enabled bool `yaml:"enabled"`
	// WindowCells is the length of a feedback window in cells: quotas,
	// the drifted flag and the retune rule count per window.
	WindowCells int `yaml:"window_cells"`
	// Band: a cell is uncertain when |p - threshold| <= band.
	Band float64 `yaml:"band"`
	// DriftRate is the fraction of cells kept from drifted windows.
	DriftRate float64 `yaml:"drift_rate"`
	// RandomRate is the fraction of all cells kept as the unbiased slice.
	RandomRate float64 `yaml:"random_rate"`
	// MaxPerWindow caps samples per window.
	MaxPerWindow int `yaml:"max_per_window"`
	// DailyBytes caps the crop bytes selected per UTC day.
	DailyBytes int64 `yaml:"daily_bytes"`
	// SecretFile keys the slide-id hash; created (32 random bytes, mode
	// 0600) when missing; empty means state_dir/feedback.key.
	SecretFile string `yaml:"secret_file"`
	Retune     Retune `yaml:"retune"`
}

// Rollout says how the device takes a model offered over MQTT: two slots
// under Dir, a golden-set check, a shadow run beside the champion, then
// promotion (see internal/rollout).
type Rollout struct {
	Enabled bool `yaml:"enabled"`
	// Dir holds the model slots and the pointer the daemon loads from;
	// empty means state_dir/models. model.path is copied into it at the
	// first start.
	Dir string `yaml:"dir"`
	// Golden is a labelled folder (labels.csv: path,label) a candidate is
	// scored on before it runs in shadow.
	Golden         string  `yaml:"golden"`
	MinAccuracy    float64 `yaml:"min_accuracy"`
	MinSensitivity float64 `yaml:"min_sensitivity"`
	// MaxArchiveBytes bounds an offered archive (download and disk).
	MaxArchiveBytes int64  `yaml:"max_archive_bytes"`
	Shadow          Shadow `yaml:"shadow"`
	// WatchCells: after a promotion, a drift alarm of the new model (on
	// its scores or features) within its first watch_cells cells rolls it
	// back automatically.
	WatchCells int `yaml:"watch_cells"`
}

// Shadow is the candidate's trial beside the champion and the rules that
// promote it.
type Shadow struct {
	// Share is the fraction of live images the candidate also classifies.
	Share float64 `yaml:"share"`
	// Slides completed with shadowed cells before the decision.
	Slides int `yaml:"slides"`
	// MinCells shadowed cells at least before the decision.
	MinCells int `yaml:"min_cells"`
	// MaxDisagreement is the largest share of shadowed cells the two
	// models may label differently.
	MaxDisagreement float64 `yaml:"max_disagreement"`
	// MaxParasitemiaDiff is the largest per-slide difference of
	// parasitemia on the shadowed cells, in percentage points.
	MaxParasitemiaDiff float64 `yaml:"max_parasitemia_diff"`
	// MaxLatencyRatio bounds the candidate's time per shadowed image
	// against the champion's on the same images.
	MaxLatencyRatio float64 `yaml:"max_latency_ratio"`
}

// Retune says when to publish a retune request: at least K of the last M
// feedback windows alarmed and at least MinLabelled labelled samples exist,
// at most once per Cooldown.
type Retune struct {
	Enabled     bool          `yaml:"enabled"`
	K           int           `yaml:"k"`
	M           int           `yaml:"m"`
	MinLabelled int           `yaml:"min_labelled"`
	Cooldown    time.Duration `yaml:"cooldown"`
}

// Memory keeps the daemon's resident set within the device budget
// (DESIGN.md §5: 200 MB).
type Memory struct {
	// GoLimit is the Go runtime's soft memory limit in bytes
	// (runtime/debug.SetMemoryLimit). ONNX Runtime, OpenCV and SQLite
	// allocate outside it. GOMEMLIMIT in the environment wins.
	GoLimit int64 `yaml:"go_limit"`
	// ReleaseFilePages hands the pages of shared libraries and the
	// executable that only the start used back to the kernel
	// (MADV_DONTNEED on clean read-only mappings): before and after the
	// model loads, and after the first image.
	ReleaseFilePages bool `yaml:"release_file_pages"`
}

// Shutdown bounds how long SIGTERM may take.
type Shutdown struct {
	Timeout time.Duration `yaml:"timeout"`
}

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the full default configuration with a comment on
// every field; decoding it yields Default().
func DefaultYAML() []byte { return append([]byte(nil), defaultYAML...) }

// Default returns the configuration used for every field a file leaves out.
func Default() Config {
	return Config{
		Site:     "default",
		Device:   "scope",
		StateDir: "/var/lib/scopewatch",
		Log:      Log{Level: "info", Format: "json"},
		Model: Model{
			Path:    "/usr/share/scopewatch/models/default",
			Threads: 2,
			Batch:   8,
		},
		Images: Images{
			Kind:         "auto",
			FieldMinSide: 400,
			MaxPixels:    4_000_000, // the memory budget; see default.yaml
			MaxBytes:     64 << 20,
			Workers:      1,
			QueueSize:    64,
		},
		Inbox: Inbox{
			Enabled:        true,
			AfterProcess:   "move",
			RescanInterval: 30 * time.Second,
			StableFor:      2 * time.Second,
			Extensions:     []string{".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"},
			StuckAfter:     2 * time.Minute,
		},
		Slides: Slides{
			Marker:      ".done",
			IdleTimeout: 10 * time.Minute,
			TargetCells: 0,
			DefaultID:   "unsorted",
			CI:          "wilson",
			// 500 cells: at 1 % parasitemia the 95 % Wilson interval is
			// 0.4-2.3 %, the precision of a manual thin-film count.
			MinCells:        500,
			MinFieldCells:   20,
			MaxRefusedShare: 0.1,
		},
		HTTP: HTTP{
			Enabled:      true,
			Listen:       "127.0.0.1:8470",
			ReadTimeout:  60 * time.Second,
			WriteTimeout: 120 * time.Second,
		},
		MQTT: MQTT{
			Enabled:        true,
			Broker:         "tcp://127.0.0.1:1883",
			TopicRoot:      "scopewatch/v1",
			KeepAlive:      30 * time.Second,
			ConnectTimeout: 10 * time.Second,
			MaxBackoff:     time.Minute,
		},
		Camera: Camera{
			Interval: 5 * time.Second,
			Slide:    "camera",
		},
		Storage: Storage{
			Retention:     90 * 24 * time.Hour,
			MaxDBBytes:    2 << 30,
			MinFreeBytes:  256 << 20,
			CheckInterval: time.Minute,
		},
		Drift: Drift{
			Enabled:         true,
			Windows:         []int{},
			PersistInterval: time.Minute,
		},
		Feedback: Feedback{
			Enabled:      false,
			WindowCells:  1000,
			Band:         0.1,
			DriftRate:    0.05,
			RandomRate:   0.005,
			MaxPerWindow: 50,
			DailyBytes:   16 << 20,
			Retune: Retune{
				Enabled:     true,
				K:           3,
				M:           5,
				MinLabelled: 200,
				Cooldown:    24 * time.Hour,
			},
		},
		Rollout: Rollout{
			Enabled:         false,
			Golden:          "/usr/share/scopewatch/golden",
			MinAccuracy:     0.97,
			MinSensitivity:  0.95,
			MaxArchiveBytes: 64 << 20,
			Shadow: Shadow{
				Share: 0.2, Slides: 5, MinCells: 200,
				MaxDisagreement: 0.25, MaxParasitemiaDiff: 5, MaxLatencyRatio: 1.5,
			},
			WatchCells: 2000,
		},
		Memory:   Memory{GoLimit: 24 << 20, ReleaseFilePages: true},
		Shutdown: Shutdown{Timeout: 20 * time.Second},
	}
}

// Env overrides: secrets are kept out of the file (systemd's
// EnvironmentFile= or LoadCredential= supply them).
var envOverrides = []struct {
	name string
	set  func(*Config, string)
}{
	{"SCOPEWATCH_MQTT_USERNAME", func(c *Config, v string) { c.MQTT.Username = v }},
	{"SCOPEWATCH_MQTT_PASSWORD", func(c *Config, v string) { c.MQTT.Password = v }},
	{"SCOPEWATCH_MQTT_BROKER", func(c *Config, v string) { c.MQTT.Broker = v }},
	{"SCOPEWATCH_HTTP_TOKEN", func(c *Config, v string) { c.HTTP.Token = v }},
}

// EnvNames lists the environment variables that override fields.
func EnvNames() []string {
	out := make([]string, len(envOverrides))
	for i, e := range envOverrides {
		out[i] = e.name
	}
	return out
}

// ErrInvalid marks every configuration error (decode or validation).
var ErrInvalid = errors.New("invalid configuration")

// FieldError is one problem with one field. Path is the dotted YAML path
// (for example "inbox.after_process").
type FieldError struct {
	Path     string
	Line     int
	Problem  string
	Accepted string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", e.Line)
	}
	b.WriteString(": ")
	b.WriteString(e.Problem)
	if e.Accepted != "" {
		b.WriteString("; accepted: ")
		b.WriteString(e.Accepted)
	}
	return b.String()
}

func (e *FieldError) Unwrap() error { return ErrInvalid }

// Errors is a list of field errors; Error joins them one per line.
type Errors []*FieldError

func (es Errors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

func (es Errors) Unwrap() error { return ErrInvalid }

// Load reads, decodes, overrides from the environment (lookup is os.LookupEnv
// in production) and validates the file at path.
func Load(path string, lookup func(string) (string, bool)) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("open config: %w", err)
	}
	defer f.Close()
	c, err := Decode(f, lookup)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Decode is Load on a reader.
func Decode(r io.Reader, lookup func(string) (string, bool)) (Config, error) {
	data, err := io.ReadAll(io.LimitReader(r, 1<<20+1))
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	if len(data) > 1<<20 {
		return Config{}, fmt.Errorf("%w: file larger than 1 MiB", ErrInvalid)
	}
	c, err := decodeStrict(data)
	if err != nil {
		return Config{}, err
	}
	if lookup != nil {
		for _, e := range envOverrides {
			if v, ok := lookup(e.name); ok && v != "" {
				e.set(&c, v)
			}
		}
	}
	c.resolvePaths()
	if errs := c.Validate(); len(errs) > 0 {
		return Config{}, errs
	}
	return c, nil
}

func decodeStrict(data []byte) (Config, error) {
	c := Default()
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return Config{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if root.Kind == 0 || (root.Kind == yaml.DocumentNode && len(root.Content) == 0) {
		return c, nil // empty file: all defaults
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode {
		doc = doc.Content[0]
	}
	if doc.Kind == yaml.ScalarNode && doc.Tag == "!!null" {
		return c, nil
	}
	if errs := checkKeys(doc, reflect.TypeOf(c), ""); len(errs) > 0 {
		return Config{}, errs
	}
	// The key walk above gives path-named errors; the strict decoder stays as
	// the safety net for anything it does not cover (types, anchors).
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("%w: %v", ErrInvalid, typeErrorPaths(err, doc))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("%w: more than one YAML document", ErrInvalid)
	}
	return c, nil
}

// typeErrorPaths rewrites yaml.v3's "line N: cannot unmarshal ..." messages
// so they name the field path found at that line.
func typeErrorPaths(err error, doc *yaml.Node) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	paths := map[int]string{}
	indexLines(doc, "", paths)
	out := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		var line int
		if _, e := fmt.Sscanf(m, "line %d:", &line); e == nil {
			if p, ok := paths[line]; ok {
				m = p + " (" + m + ")"
			}
		}
		out = append(out, m)
	}
	return errors.New(strings.Join(out, "; "))
}

func indexLines(n *yaml.Node, prefix string, out map[int]string) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p := k.Value
		if prefix != "" {
			p = prefix + "." + k.Value
		}
		out[k.Line] = p
		if v.Line != k.Line || v.Kind != yaml.MappingNode {
			out[v.Line] = p
		}
		indexLines(v, p, out)
	}
}

var durationType = reflect.TypeOf(time.Duration(0))

// checkKeys walks the YAML mapping against the struct type and reports every
// unknown key with its full path and the keys accepted at that level.
func checkKeys(n *yaml.Node, t reflect.Type, prefix string) Errors {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if t.Kind() != reflect.Struct || t == durationType {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return nil
		}
		name := prefix
		if name == "" {
			name = "(top level)"
		}
		return Errors{{Path: name, Line: n.Line, Problem: "expected a mapping of keys", Accepted: strings.Join(yamlKeys(t), ", ")}}
	}
	var errs Errors
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		path := k.Value
		if prefix != "" {
			path = prefix + "." + k.Value
		}
		if seen[k.Value] {
			errs = append(errs, &FieldError{Path: path, Line: k.Line, Problem: "key given twice"})
			continue
		}
		seen[k.Value] = true
		f, ok := fieldByTag(t, k.Value)
		if !ok {
			errs = append(errs, &FieldError{Path: path, Line: k.Line, Problem: "unknown field", Accepted: strings.Join(yamlKeys(t), ", ")})
			continue
		}
		errs = append(errs, checkKeys(v, f.Type, path)...)
	}
	return errs
}

func fieldByTag(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if tagName(f) == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func tagName(f reflect.StructField) string {
	tag := f.Tag.Get("yaml")
	if i := strings.IndexByte(tag, ','); i >= 0 {
		tag = tag[:i]
	}
	return tag
}

func yamlKeys(t reflect.Type) []string {
	var ks []string
	for i := 0; i < t.NumField(); i++ {
		if n := tagName(t.Field(i)); n != "" && n != "-" {
			ks = append(ks, n)
		}
	}
	return ks
}

// resolvePaths fills the paths whose default derives from state_dir.
func (c *Config) resolvePaths() {
	if c.StateDir == "" {
		return
	}
	if c.Database == "" {
		c.Database = filepath.Join(c.StateDir, "scopewatch.db")
	}
	if c.Feedback.SecretFile == "" {
		c.Feedback.SecretFile = filepath.Join(c.StateDir, "feedback.key")
	}
	if c.Rollout.Dir == "" {
		c.Rollout.Dir = filepath.Join(c.StateDir, "models")
	}
	if c.Inbox.Dir == "" {
		c.Inbox.Dir = filepath.Join(c.StateDir, "inbox")
	}
	if c.Inbox.DoneDir == "" {
		c.Inbox.DoneDir = filepath.Join(c.StateDir, "done")
	}
	if c.Inbox.QuarantineDir == "" {
		c.Inbox.QuarantineDir = filepath.Join(c.StateDir, "quarantine")
	}
}

// Accepted values of the enumerated fields.
var (
	LogLevels     = []string{"debug", "info", "warn", "error"}
	LogFormats    = []string{"json", "text"}
	ImageKinds    = []string{"auto", "crop", "field"}
	AfterProcess  = []string{"move", "delete"}
	CIMethods     = []string{"wilson", "clopper-pearson"}
	BrokerSchemes = []string{"tcp", "ssl", "tls", "ws", "wss", "mqtt", "mqtts"}
)

// Validate checks every field and returns all problems at once.
func (c *Config) Validate() Errors {
	var errs Errors
	add := func(path, problem, accepted string) {
		errs = append(errs, &FieldError{Path: path, Problem: problem, Accepted: accepted})
	}
	oneOf := func(path, v string, allowed []string) {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		add(path, fmt.Sprintf("%q is not accepted", v), strings.Join(allowed, ", "))
	}
	topicLevel := func(path, v string) {
		if mqttconn.ValidateLevel(v) != nil {
			add(path, fmt.Sprintf("%q is not a usable MQTT topic level", v), "1-64 characters from a-z 0-9 - _")
		}
	}
	positiveDur := func(path string, d time.Duration) {
		if d <= 0 {
			add(path, fmt.Sprintf("%s must be positive", d), "a Go duration such as 500ms, 30s, 10m, 2h")
		}
	}
	topicLevel("site", c.Site)
	topicLevel("device", c.Device)
	if c.StateDir == "" {
		add("state_dir", "must not be empty", "a directory path")
	}
	oneOf("log.level", c.Log.Level, LogLevels)
	oneOf("log.format", c.Log.Format, LogFormats)
	if c.Model.Path == "" {
		add("model.path", "must not be empty", "a model bundle directory or .tar")
	}
	if c.Model.Threads < 1 || c.Model.Threads > 64 {
		add("model.threads", fmt.Sprintf("%d out of range", c.Model.Threads), "1..64")
	}
	if c.Model.Batch < 1 || c.Model.Batch > 1024 {
		add("model.batch", fmt.Sprintf("%d out of range", c.Model.Batch), "1..1024")
	}
	if c.Model.Threshold < 0 || c.Model.Threshold >= 1 {
		add("model.threshold", fmt.Sprintf("%g out of range", c.Model.Threshold), "0 (use the manifest's threshold) or a probability in (0, 1)")
	}
	oneOf("images.kind", c.Images.Kind, ImageKinds)
	if c.Images.FieldMinSide < 32 {
		add("images.field_min_side", fmt.Sprintf("%d too small", c.Images.FieldMinSide), "an integer >= 32 (pixels)")
	}
	if c.Images.MaxPixels < 1024 || c.Images.MaxPixels > 1<<31 {
		add("images.max_pixels", fmt.Sprintf("%d out of range", c.Images.MaxPixels), "1024..2147483648")
	}
	if c.Images.MaxBytes < 1024 {
		add("images.max_bytes", fmt.Sprintf("%d too small", c.Images.MaxBytes), "an integer >= 1024 (bytes)")
	}
	if c.Images.Workers < 1 || c.Images.Workers > 64 {
		add("images.workers", fmt.Sprintf("%d out of range", c.Images.Workers), "1..64")
	}
	if c.Images.QueueSize < 1 || c.Images.QueueSize > 1<<16 {
		add("images.queue_size", fmt.Sprintf("%d out of range", c.Images.QueueSize), "1..65536")
	}
	if c.Inbox.Enabled {
		if c.Inbox.Dir == "" {
			add("inbox.dir", "must not be empty when the inbox is enabled", "a directory path")
		}
		oneOf("inbox.after_process", c.Inbox.AfterProcess, AfterProcess)
		positiveDur("inbox.rescan_interval", c.Inbox.RescanInterval)
		positiveDur("inbox.stuck_after", c.Inbox.StuckAfter)
		if c.Inbox.StableFor < 0 {
			add("inbox.stable_for", "must not be negative", "a Go duration such as 2s (0 takes files as soon as they appear; only safe with write-then-rename)")
		}
		if len(c.Inbox.Extensions) == 0 {
			add("inbox.extensions", "must list at least one extension", "for example [.png, .jpg]")
		}
		for i, e := range c.Inbox.Extensions {
			if !strings.HasPrefix(e, ".") || len(e) < 2 || strings.ContainsAny(e, "/\\") {
				add(fmt.Sprintf("inbox.extensions[%d]", i), fmt.Sprintf("%q is not a file extension", e), "a dot and letters, such as .png")
			}
		}
		if c.Inbox.Dir != "" && (c.Inbox.Dir == c.Inbox.DoneDir || c.Inbox.Dir == c.Inbox.QuarantineDir) {
			add("inbox.dir", "must differ from inbox.done_dir and inbox.quarantine_dir", "separate directories")
		}
	}
	if c.Slides.Marker == "" || strings.ContainsAny(c.Slides.Marker, "/\\") {
		add("slides.marker", fmt.Sprintf("%q is not a file name", c.Slides.Marker), "a plain file name such as .done")
	}
	if c.Slides.IdleTimeout < 0 {
		add("slides.idle_timeout", "must not be negative", "0 (off) or a Go duration such as 10m")
	}
	if c.Slides.TargetCells < 0 {
		add("slides.target_cells", "must not be negative", "0 (off) or a cell count such as 1000")
	}
	if !validSlideID(c.Slides.DefaultID) {
		add("slides.default_id", fmt.Sprintf("%q is not a slide id", c.Slides.DefaultID), "1-128 characters from A-Z a-z 0-9 . _ -, not starting with a dot")
	}
	oneOf("slides.ci", c.Slides.CI, CIMethods)
	if c.Slides.MinCells < 1 {
		add("slides.min_cells", fmt.Sprintf("%d", c.Slides.MinCells), "a cell count of at least 1, such as 500")
	}
	if c.Slides.MinFieldCells < 0 {
		add("slides.min_field_cells", fmt.Sprintf("%d", c.Slides.MinFieldCells), "0 (off) or a cell count such as 20")
	}
	if !(c.Slides.MaxRefusedShare >= 0 && c.Slides.MaxRefusedShare <= 1) {
		add("slides.max_refused_share", fmt.Sprintf("%v", c.Slides.MaxRefusedShare), "a fraction from 0 to 1, such as 0.1")
	}
	if c.HTTP.Enabled {
		if !strings.Contains(c.HTTP.Listen, ":") {
			add("http.listen", fmt.Sprintf("%q is not host:port", c.HTTP.Listen), "host:port such as 127.0.0.1:8470 or :8470")
		}
		positiveDur("http.read_timeout", c.HTTP.ReadTimeout)
		positiveDur("http.write_timeout", c.HTTP.WriteTimeout)
		switch {
		case c.HTTP.Token != "" && len(c.HTTP.Token) < MinTokenLen:
			add("http.token", fmt.Sprintf("%d characters is too short to guess-proof", len(c.HTTP.Token)), fmt.Sprintf("at least %d characters, e.g. from `openssl rand -hex 24` (or SCOPEWATCH_HTTP_TOKEN)", MinTokenLen))
		case c.HTTP.Token == "" && !loopbackListen(c.HTTP.Listen):
			add("http.token", fmt.Sprintf("empty while http.listen %q accepts connections from other hosts", c.HTTP.Listen), "a token of at least 16 characters (or SCOPEWATCH_HTTP_TOKEN), or a loopback http.listen such as 127.0.0.1:8470")
		}
	}
	if c.MQTT.Enabled {
		scheme, _, ok := strings.Cut(c.MQTT.Broker, "://")
		if !ok {
			add("mqtt.broker", fmt.Sprintf("%q has no scheme", c.MQTT.Broker), "scheme://host:port with scheme one of "+strings.Join(BrokerSchemes, ", "))
		} else {
			oneOf("mqtt.broker", scheme, BrokerSchemes)
		}
		// The same rule every producer and consumer of topics applies.
		if _, err := mqttconn.NewTopics(c.MQTT.TopicRoot); err != nil {
			add("mqtt.topic_root", fmt.Sprintf("%q is not usable (%v)", c.MQTT.TopicRoot, err), "one to three topic levels of a-z 0-9 - _ . without wildcards, such as scopewatch/v1")
		}
		positiveDur("mqtt.keep_alive", c.MQTT.KeepAlive)
		positiveDur("mqtt.connect_timeout", c.MQTT.ConnectTimeout)
		positiveDur("mqtt.max_backoff", c.MQTT.MaxBackoff)
		if (c.MQTT.TLS.CertFile == "") != (c.MQTT.TLS.KeyFile == "") {
			add("mqtt.tls.cert_file", "cert_file and key_file must be given together", "both paths or neither")
		}
		if c.MQTT.Password != "" && c.MQTT.Username == "" {
			add("mqtt.username", "a password is set but no username", "a user name (or SCOPEWATCH_MQTT_USERNAME)")
		}
	}
	if c.Camera.Enabled {
		if c.Camera.Source == "" {
			add("camera.source", "must not be empty when the camera is enabled", "a V4L2 device such as /dev/video0 or a video file path")
		}
		positiveDur("camera.interval", c.Camera.Interval)
		if !validSlideID(c.Camera.Slide) {
			add("camera.slide", fmt.Sprintf("%q is not a slide id", c.Camera.Slide), "1-128 characters from A-Z a-z 0-9 . _ -")
		}
	}
	if c.Storage.Retention < time.Hour {
		add("storage.retention", fmt.Sprintf("%s too short", c.Storage.Retention), "a Go duration of at least 1h, such as 2160h (90 days)")
	}
	if c.Storage.MaxDBBytes < 1<<20 {
		add("storage.max_db_bytes", fmt.Sprintf("%d too small", c.Storage.MaxDBBytes), "an integer >= 1048576 (bytes)")
	}
	if c.Storage.MinFreeBytes < 0 {
		add("storage.min_free_bytes", "must not be negative", "0 (off) or bytes")
	}
	positiveDur("storage.check_interval", c.Storage.CheckInterval)
	if c.Drift.Enabled {
		c.validateDrift(add)
	}
	if c.Feedback.Enabled {
		c.validateFeedback(add)
	}
	if c.Rollout.Enabled {
		c.validateRollout(add)
	}
	if c.Memory.GoLimit < 8<<20 || c.Memory.GoLimit > 64<<30 {
		add("memory.go_limit", fmt.Sprintf("%d bytes out of range", c.Memory.GoLimit), "bytes in [8388608, 68719476736] (8 MiB..64 GiB)")
	}
	if c.Shutdown.Timeout <= 0 || c.Shutdown.Timeout > 10*time.Minute {
		add("shutdown.timeout", fmt.Sprintf("%s out of range", c.Shutdown.Timeout), "a Go duration in (0, 10m]")
	}
	return errs
}

func (c *Config) validateDrift(add func(path, problem, accepted string)) {
	d := c.Drift
	if d.ERT != 0 && (d.ERT < 100 || d.ERT > 100_000_000) {
		add("drift.ert", fmt.Sprintf("%d out of range", d.ERT), "0 (the baseline's calibration) or 100..100000000 cells")
	}
	if d.WarnERT < 0 || (d.WarnERT > 0 && d.ERT > 0 && d.WarnERT > d.ERT) {
		add("drift.warn_ert", fmt.Sprintf("%d out of range", d.WarnERT), "0 (ert/10) or 1..drift.ert cells")
	}
	for i, w := range d.Windows {
		if w < 10 || w > 100_000 {
			add(fmt.Sprintf("drift.windows[%d]", i), fmt.Sprintf("%d out of range", w), "10..100000 cells")
		} else if i > 0 && w <= d.Windows[i-1] {
			add(fmt.Sprintf("drift.windows[%d]", i), fmt.Sprintf("%d is not above the previous size", w), "ascending distinct sizes such as [50, 200, 1000]")
		}
	}
	if len(d.Windows) > 8 {
		add("drift.windows", fmt.Sprintf("%d sizes", len(d.Windows)), "at most 8 sizes")
	}
	if d.Sims != 0 && (d.Sims < 100 || d.Sims > 100_000) {
		add("drift.sims", fmt.Sprintf("%d out of range", d.Sims), "0 (the baseline's) or 100..100000")
	}
	if d.Embedding && c.Images.Kind != "crop" {
		add("drift.embedding", "needs images.kind crop", "false, or images.kind crop (segmented field cells carry no features)")
	}
	if d.PersistInterval < time.Second {
		add("drift.persist_interval", fmt.Sprintf("%s too short", d.PersistInterval), "a Go duration of at least 1s, such as 1m")
	}
}

func (c *Config) validateFeedback(add func(path, problem, accepted string)) {
	f := c.Feedback
	if !c.MQTT.Enabled {
		add("feedback.enabled", "needs mqtt.enabled", "false, or mqtt.enabled true")
	}
	if f.WindowCells < 10 || f.WindowCells > 1_000_000 {
		add("feedback.window_cells", fmt.Sprintf("%d out of range", f.WindowCells), "10..1000000 cells")
	}
	frac := func(path string, v, hi float64) {
		if !(v > 0 && v <= hi) {
			add(path, fmt.Sprintf("%g out of range", v), fmt.Sprintf("a number in (0, %g]", hi))
		}
	}
	frac("feedback.band", f.Band, 0.5)
	frac("feedback.drift_rate", f.DriftRate, 1)
	frac("feedback.random_rate", f.RandomRate, 1)
	if f.MaxPerWindow < 1 || f.MaxPerWindow > f.WindowCells {
		add("feedback.max_per_window", fmt.Sprintf("%d out of range", f.MaxPerWindow), "1..feedback.window_cells")
	}
	if f.DailyBytes < 1<<16 {
		add("feedback.daily_bytes", fmt.Sprintf("%d too small", f.DailyBytes), "an integer >= 65536 (bytes)")
	}
	if f.SecretFile == "" {
		add("feedback.secret_file", "must not be empty", "a file path (created when missing)")
	}
	if r := f.Retune; r.Enabled {
		if r.K < 1 || r.M < r.K || r.M > 1000 {
			add("feedback.retune.k", fmt.Sprintf("k %d of m %d", r.K, r.M), "1 <= k <= m <= 1000")
		}
		if r.MinLabelled < 1 {
			add("feedback.retune.min_labelled", fmt.Sprintf("%d too small", r.MinLabelled), "an integer >= 1")
		}
		if r.Cooldown <= 0 {
			add("feedback.retune.cooldown", fmt.Sprintf("%s must be positive", r.Cooldown), "a Go duration such as 24h")
		}
	}
}

func (c *Config) validateRollout(add func(path, problem, accepted string)) {
	r := c.Rollout
	if !c.MQTT.Enabled {
		add("rollout.enabled", "needs mqtt.enabled (offers arrive over MQTT)", "false, or mqtt.enabled true")
	}
	if r.Dir == "" {
		add("rollout.dir", "must not be empty", "a folder (created when missing)")
	}
	if r.Golden == "" {
		add("rollout.golden", "must not be empty", "a labelled folder (labels.csv: path,label) of cells never trained on")
	}
	frac := func(path string, v float64) {
		if !(v > 0 && v <= 1) {
			add(path, fmt.Sprintf("%g out of range", v), "a number in (0, 1]")
		}
	}
	frac("rollout.min_accuracy", r.MinAccuracy)
	frac("rollout.min_sensitivity", r.MinSensitivity)
	frac("rollout.shadow.share", r.Shadow.Share)
	frac("rollout.shadow.max_disagreement", r.Shadow.MaxDisagreement)
	if r.MaxArchiveBytes < 1<<20 {
		add("rollout.max_archive_bytes", fmt.Sprintf("%d too small", r.MaxArchiveBytes), "an integer >= 1048576 (bytes)")
	}
	if r.Shadow.Slides < 1 || r.Shadow.Slides > 1000 {
		add("rollout.shadow.slides", fmt.Sprintf("%d out of range", r.Shadow.Slides), "1..1000 slides")
	}
	if r.Shadow.MinCells < 1 {
		add("rollout.shadow.min_cells", fmt.Sprintf("%d too small", r.Shadow.MinCells), "an integer >= 1")
	}
	if !(r.Shadow.MaxParasitemiaDiff > 0 && r.Shadow.MaxParasitemiaDiff <= 100) {
		add("rollout.shadow.max_parasitemia_diff", fmt.Sprintf("%g out of range", r.Shadow.MaxParasitemiaDiff), "percentage points in (0, 100]")
	}
	if !(r.Shadow.MaxLatencyRatio >= 1) {
		add("rollout.shadow.max_latency_ratio", fmt.Sprintf("%g out of range", r.Shadow.MaxLatencyRatio), "a ratio >= 1")
	}
	if r.WatchCells < 0 {
		add("rollout.watch_cells", fmt.Sprintf("%d is negative", r.WatchCells), "an integer >= 0 (0: no automatic rollback)")
	}
}

// ValidSlideID reports whether s can name a slide (and its folder).
func ValidSlideID(s string) bool { return validSlideID(s) }

func validSlideID(s string) bool {
	if len(s) == 0 || len(s) > 128 || s[0] == '.' {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return false
		}
	}
	return true
}

// Reloadable lists the field paths that SIGHUP applies without a restart.
var Reloadable = []string{
	"log.level",
	"model.path",
	"model.keys",
	"model.allow_unsigned",
	"model.threads",
	"model.batch",
	"model.threshold",
	"http.token",
	"slides.idle_timeout",
	"slides.target_cells",
	"slides.ci",
	"storage.retention",
	"storage.max_db_bytes",
	"storage.min_free_bytes",
}

// WithReloaded returns c with the Reloadable fields taken from next.
func (c Config) WithReloaded(next Config) Config {
	dst, src := reflect.ValueOf(&c).Elem(), reflect.ValueOf(next)
	for _, p := range Reloadable {
		d, s := dst, src
		for _, key := range strings.Split(p, ".") {
			f, ok := fieldByTag(d.Type(), key)
			if !ok {
				panic("config: Reloadable names unknown field " + p)
			}
			d, s = d.FieldByIndex(f.Index), s.FieldByIndex(f.Index)
		}
		d.Set(s)
	}
	return c
}

// Diff returns the dotted paths of the leaf fields that differ between a and b.
func Diff(a, b Config) []string {
	var out []string
	diffValue(reflect.ValueOf(a), reflect.ValueOf(b), "", &out)
	sort.Strings(out)
	return out
}

func diffValue(a, b reflect.Value, prefix string, out *[]string) {
	if a.Kind() == reflect.Struct && a.Type() != durationType {
		for i := 0; i < a.NumField(); i++ {
			p := tagName(a.Type().Field(i))
			if prefix != "" {
				p = prefix + "." + p
			}
			diffValue(a.Field(i), b.Field(i), p, out)
		}
		return
	}
	if !reflect.DeepEqual(a.Interface(), b.Interface()) {
		*out = append(*out, prefix)
	}
}

// Redacted returns a copy safe to log or print.
func (c Config) Redacted() Config {
	if c.MQTT.Password != "" {
		c.MQTT.Password = "REDACTED"
	}
	return c
}

// MinTokenLen is the shortest http.token accepted.
const MinTokenLen = 16

// loopbackListen reports whether a host:port listen address only accepts
// connections from this machine. An empty host listens on every interface.
func loopbackListen(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
