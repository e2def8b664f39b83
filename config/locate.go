package config

import (
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// lineOf finds the line a meaning error (validate) is about: validate's
// messages start with the table they are in (`listener "orders": `,
// `backend "b": server "db1:1521": `, `log: `), then the key. It is the
// line that sets the key in that table when there is one, else the table's
// header; 0 when the message names no table of the text (no table at all,
// or a table of a name given to several in which the key is not written:
// no line rather than another table's). nth says which of the messages
// alike this is (a name defined twice: which table of the name).
func lineOf(text, msg string, nth int) int {
	lines := strings.Split(strings.TrimPrefix(text, "\ufeff"), "\n")
	kind, name, rest, ok := tableOf(msg)
	if !ok {
		return 0
	}
	tables := sections(lines, kind, name)
	switch {
	case len(tables) == 0:
		return 0
	case len(tables) == 1:
		line, _ := keyLine(lines, tables[0], kind, rest)
		return line
	case strings.HasSuffix(msg, ": name is defined twice") && nth < len(tables):
		line, _ := keyLine(lines, tables[nth], kind, rest)
		return line
	}
	// Tables of one name: the nth of those that set the key.
	for _, t := range tables {
		if line, exact := keyLine(lines, t, kind, rest); exact {
			if nth == 0 {
				return line
			}
			nth--
		}
	}
	return 0
}

// keyLine is the line in table t ([start, end) of lines) that sets the key
// rest begins with, and true; or t's header line and false.
func keyLine(lines []string, t [2]int, kind, rest string) (int, bool) {
	start, end := t[0], t[1]
	// A server of a backend: the line of its address.
	if addr, after, ok := quotedPrefix(rest, "server "); ok {
		for i := start; i < end; i++ {
			if strings.Contains(lines[i], strconv.Quote(addr)) {
				return i + 1, true
			}
		}
		rest = after
	}
	key := rest
	if i := strings.IndexFunc(key, func(r rune) bool { return !(r == '.' || r == '_' || 'a' <= r && r <= 'z') }); i >= 0 {
		key = key[:i]
	}
	key = strings.TrimSuffix(key, ".")
	if key != "" {
		path := toml.Key{kind}
		path = append(path, strings.Split(key, ".")...)
		if l, _ := locateKey(strings.Join(lines[start:end], "\n"), path); l > 1 {
			return start + l, true
		}
	}
	return start + 1, false
}

// tableOf splits a validate message into its table (kind and name, "" for
// [log] and [admin]) and the rest.
func tableOf(msg string) (kind, name, rest string, ok bool) {
	for _, k := range []string{"log", "admin"} {
		if r, found := strings.CutPrefix(msg, k+": "); found {
			return k, "", r, true
		}
	}
	for _, k := range []string{"listener", "backend"} {
		if n, r, found := quotedPrefix(msg, k+" "); found {
			return k, n, r, true
		}
	}
	return "", "", "", false
}

// quotedPrefix reads `PREFIX"NAME": ` at the start of s.
func quotedPrefix(s, prefix string) (name, rest string, ok bool) {
	r, found := strings.CutPrefix(s, prefix)
	if !found || !strings.HasPrefix(r, `"`) {
		return "", "", false
	}
	q, err := strconv.QuotedPrefix(r)
	if err != nil {
		return "", "", false
	}
	name, _ = strconv.Unquote(q)
	rest, found = strings.CutPrefix(r[len(q):], ": ")
	return name, rest, found
}

// sections returns the line ranges [start, end) of the tables of kind
// named name ([log] or [admin] when name is ""), subtables included.
func sections(lines []string, kind, name string) [][2]int {
	header := func(l string) (string, bool) {
		t := strings.ReplaceAll(strings.TrimSpace(l), " ", "")
		if !strings.HasPrefix(t, "[") {
			return "", false
		}
		t = strings.Trim(t, "[]")
		if i := strings.IndexByte(t, ']'); i >= 0 {
			t = t[:i]
		}
		return t, true
	}
	var out [][2]int
	for i := 0; i < len(lines); i++ {
		h, ok := header(lines[i])
		if !ok || h != kind {
			continue
		}
		j := i + 1
		for ; j < len(lines); j++ {
			if h, ok := header(lines[j]); ok && !strings.HasPrefix(h, kind+".") {
				break
			}
		}
		if name == "" || tableName(lines[i:j]) == name {
			out = append(out, [2]int{i, j})
		}
		i = j - 1
	}
	return out
}

// tableName is the name = "..." set in a table's own lines (before any
// subtable).
func tableName(lines []string) string {
	for _, l := range lines[1:] {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "[") {
			break
		}
		k, v, ok := strings.Cut(t, "=")
		if ok && strings.TrimSpace(k) == "name" {
			v = strings.TrimSpace(strings.SplitN(strings.TrimSpace(v), "#", 2)[0])
			if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' { // a literal string
				return v[1 : len(v)-1]
			}
			if s, err := strconv.Unquote(v); err == nil {
				return s
			}
		}
	}
	return ""
}
