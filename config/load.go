package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Errors is every problem found in one file, one per line.
type Errors []string

func (e Errors) Error() string { return strings.Join(e, "\n") }

// Load reads, validates and returns the configuration in path. Warnings are
// things that work but probably not as meant (keepalive slower than the
// path's idle timeout, an exposed admin listener).
func Load(path string) (*Config, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	return Parse(data, path)
}

// Parse is Load for text already read; source names it in messages.
func Parse(data []byte, source string) (*Config, []string, error) {
	var c Config
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			line, col := position(data, pe)
			msg := pe.Message
			if strings.HasPrefix(msg, badDuration) && pe.LastKey != "" {
				msg = fmt.Sprintf("key %q: %s", pe.LastKey, msg) // the key a Duration was decoded for
			}
			return nil, nil, Errors{fmt.Sprintf("%s:%d:%d: %s", source, line, col, msg)}
		}
		return nil, nil, Errors{source + ":" + mismatch(string(data), err)}
	}
	var errs Errors
	seen := map[string]bool{} // a key of every [[listener]] is reported once
	for _, k := range md.Undecoded() {
		if seen[k.String()] {
			continue
		}
		seen[k.String()] = true
		line, col := locateKey(string(data), k)
		errs = append(errs, fmt.Sprintf("%s:%d:%d: unknown key %q", source, line, col, k.String()))
	}
	// The library matches keys to fields ignoring case, so Allow or
	// MAX_SESSIONS would pass silently (and with both allow and Allow in a
	// table, either could win): keys are lower case, as written here. A
	// key is reported at its first part so spelled (Keepalive.idle as
	// listener.Keepalive), once.
	for _, k := range md.Keys() {
		n, want := caseMismatch(k)
		if n == 0 || seen[k[:n].String()] {
			continue
		}
		seen[k[:n].String()] = true
		line, col := locateKey(string(data), k)
		errs = append(errs, fmt.Sprintf("%s:%d:%d: unknown key %q: keys are lower case (%q)", source, line, col, k[:n].String(), want))
	}
	// Unknown keys were left out of c: what is there is checked too, so one
	// run of check shows every error it can.
	c.Source = source
	c.applyDefaults()
	verrs, warnings, errAt, warnAt := c.validate()
	errs = append(errs, withLines(source, string(data), verrs, errAt)...)
	warnings = withLines(source, string(data), warnings, warnAt)
	if len(errs) > 0 {
		return nil, warnings, errs
	}
	return &c, warnings, nil
}

// withLines prefixes each of validate's messages with source and ends it
// with the line it is about, when the file has one (lineOf, in the table
// at names): the contract's `FILE: listener "x": ...` stays as it was, and
// the line is named too.
func withLines(source, text string, msgs []string, at []tablePos) []string {
	out := make([]string, 0, len(msgs))
	for i, m := range msgs {
		if line := lineOf(text, m, at[i]); line > 0 {
			out = append(out, fmt.Sprintf("%s: %s (line %d)", source, m, line))
		} else {
			out = append(out, source+": "+m)
		}
	}
	return out
}

// caseMismatch finds the first part of k that names a field of Config
// only when case is ignored: it returns how many parts of k lead up to it
// (0: none), and the field's real name. Keys inside a map (routes) are the
// user's own; an unknown part is Undecoded's to report.
func caseMismatch(k toml.Key) (int, string) {
	t := reflect.TypeFor[Config]()
	for i, part := range k {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return 0, "" // a map's keys, or below a value
		}
		name, found, next := "", false, t
		for j := range t.NumField() {
			f := t.Field(j)
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if tag == part {
				found, next = true, f.Type
				break
			}
			if tag != "-" && tag != "" && strings.EqualFold(tag, part) {
				name = tag
			}
		}
		if !found {
			if name == "" {
				return 0, "" // unknown: Undecoded reports it
			}
			return i + 1, name
		}
		t = next
	}
	return 0, ""
}

// locateKey finds the line and column of an undecoded key in the TOML text:
// the first line that sets its last part inside a table whose header
// matches the key's table path. MetaData keeps no positions for keys it did
// not decode, so this reads the text; it falls back to line 1.
func locateKey(text string, k toml.Key) (int, int) {
	if len(k) == 0 {
		return 1, 1
	}
	current := ""
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "[") {
			name := strings.Trim(line, "[] \t")
			if j := strings.IndexByte(name, ']'); j >= 0 {
				name = name[:j]
			}
			current = strings.ReplaceAll(name, " ", "")
			if current == strings.Join(k, ".") {
				return i + 1, strings.Index(raw, "[") + 1
			}
			continue
		}
		// The key may sit in this table's header, or in a parent's as a
		// dotted key (a.b = 1) or inside an inline table (a = { b = 1 }).
		rest, ok := strings.CutPrefix(strings.Join(k, "."), current)
		if current != "" {
			rest, ok = strings.CutPrefix(rest, ".")
		}
		if !ok || rest == "" {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key = strings.TrimSpace(key)
		dotted := strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(key, " ", ""), `"`, ""), "'", "")
		if dotted == rest {
			return i + 1, strings.Index(raw, key) + 1
		}
		if inner, ok := strings.CutPrefix(rest, dotted+"."); ok && strings.HasPrefix(strings.TrimSpace(value), "{") {
			if j := strings.Index(raw, inner[strings.LastIndexByte(inner, '.')+1:]); j > strings.Index(raw, "{") {
				return i + 1, j + 1
			}
		}
	}
	return 1, 1
}

// position is the line and column of a syntax error, both counted from its
// byte offset: the library's Line is the lexer's, which has already passed
// the newline after a token that ends a line, and would name the next line.
func position(data []byte, pe toml.ParseError) (int, int) {
	start := min(max(pe.Position.Start, 0), len(data))
	before := data[:start]
	return 1 + bytes.Count(before, []byte{'\n'}), start - bytes.LastIndexByte(before, '\n')
}

// typeMismatch is how the TOML library reports a value of the wrong type
// (max_sessions = "ten"): a plain error with the line and key in its text.
var typeMismatch = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// mismatch renders a decode error that is not a ParseError as
// "LINE:COL: message" naming the key, like every other config error; an
// error of another shape keeps its own text after "1:1".
func mismatch(text string, err error) string {
	m := typeMismatch.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Sprintf("1:1: %v", err)
	}
	line, _ := strconv.Atoi(m[1])
	col := 1
	if lines := strings.Split(text, "\n"); line >= 1 && line <= len(lines) {
		key := m[2][strings.LastIndexByte(m[2], '.')+1:]
		if i := strings.Index(lines[line-1], key); i >= 0 {
			col = i + 1
		}
	}
	msg := m[3]
	if t := tomlTypes.FindStringSubmatch(msg); t != nil {
		msg = fmt.Sprintf("%s given where %s is needed", typeName(t[1]), typeName(t[2]))
	}
	return fmt.Sprintf("%d:%d: key %q: %s", line, col, m[2], msg)
}

var tomlTypes = regexp.MustCompile(`^incompatible types: TOML value has type (.*); destination has type (.*)$`)

// typeName says a TOML type in the words of the TOML spec, from the Go
// names the library's message gives for values and destinations.
func typeName(t string) string {
	switch {
	case t == "string":
		return "a string"
	case t == "int64" || t == "integer":
		return "an integer"
	case t == "float64" || t == "float":
		return "a float"
	case t == "bool" || t == "boolean":
		return "a boolean"
	case strings.HasPrefix(t, "[]") || t == "slice":
		return "an array"
	case strings.HasPrefix(t, "map[") || t == "map" || t == "struct":
		return "a table"
	case strings.Contains(t, "time."):
		return "a date-time"
	}
	return t
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
