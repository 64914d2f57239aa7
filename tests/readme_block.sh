# Sourced by the install tests: readme_block NAME prints the fenced code block
# that follows the line "<!-- NAME -->" in README.md, so that the tests run
# exactly the commands README.md shows. Needs $source_dir.
readme_block() {
  local text
  text=$(awk -v marker="<!-- $1 -->" '
    $0 == marker { found = 1; next }
    found && /^```/ { if (inside) exit; inside = 1; next }
    found && inside { print }' "$source_dir/README.md")
  if [ -z "$text" ]; then
    echo "README.md has no code block after <!-- $1 -->" >&2
    return 1
  fi
  printf '%s\n' "$text"
}
