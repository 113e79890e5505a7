from search_ui.app import main

main()
